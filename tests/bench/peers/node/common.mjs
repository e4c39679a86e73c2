// What the graphile-worker and pg-boss drivers share: the protocol of
// ../README.md (settings, output, the timeout), the clock, the producers of
// the `single` and `latency` workloads, and the bookkeeping that proves each
// job ran exactly once.
import { readFileSync } from 'node:fs'
import { performance } from 'node:perf_hooks'
import pg from 'pg'

// The 40-byte args of every job (the latency workload adds `n`).
export const PAYLOAD = Object.freeze({ user_id: 123456, template: 'welcome' })

// Jobs per bulk call, for both drivers: one call of 100,000 would also work,
// but an application enqueueing that many splits them so no single statement
// holds megabytes of JSON and a lock for seconds.
export const BULK_CHUNK = 10_000

// Producer connections of the latency workload sharing BENCH_RATE, as the
// Rust benchmark does for commitq.
export const LATENCY_PRODUCERS = 4

// How long the worker of the latency workload runs before the producers
// start, so its connections and LISTEN are up (the Rust side waits as long).
export const LATENCY_WARMUP_MS = 500

function intEnv (name, fallback) {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return fallback
  const v = Number(raw)
  // Zero is allowed: the benchmark runs `setup` with zero jobs and seconds.
  if (!Number.isInteger(v) || v < 0) throw new Error(`${name} must be a whole number, got ${raw}`)
  return v
}

export function readEnv () {
  const url = process.env.BENCH_URL
  if (!url) throw new Error('BENCH_URL is required')
  const host = new URL(url).hostname
  // The benchmark only ever talks to its own cluster.
  if (!['127.0.0.1', 'localhost', '::1', '[::1]'].includes(host)) {
    throw new Error(`BENCH_URL must point at loopback, got host ${host}`)
  }
  return {
    url,
    jobs: intEnv('BENCH_JOBS', 100_000),
    concurrency: intEnv('BENCH_CONCURRENCY', 16),
    clients: intEnv('BENCH_CLIENTS', 8),
    seconds: intEnv('BENCH_SECONDS', 10),
    rate: intEnv('BENCH_RATE', 500),
    timeout: intEnv('BENCH_TIMEOUT', 600)
  }
}

export const now = () => performance.now()
export const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

// The reason goes on the last line of stderr: that is the line the benchmark
// reports when a driver fails.
export function fail (err) {
  if (err?.stack) process.stderr.write(`${err.stack}\n`)
  process.stderr.write(`error: ${err?.message ?? err}\n`)
  process.exit(1)
}

export function log (message) {
  process.stderr.write(`${message}\n`)
}

// Arms the BENCH_TIMEOUT guard and returns the deadline on the `now()` clock.
// The timer kills the process even if a library call never returns; the
// deadline lets every loop stop on its own first.
export function startGuard (timeoutSeconds) {
  const timer = setTimeout(() => {
    process.stderr.write(`error: BENCH_TIMEOUT of ${timeoutSeconds} s passed\n`)
    process.exit(3)
  }, timeoutSeconds * 1000)
  timer.unref()
  return now() + timeoutSeconds * 1000
}

export function checkDeadline (deadline, what) {
  if (now() > deadline) throw new Error(`BENCH_TIMEOUT passed while ${what}`)
}

// Polls `done()` (sync or async) every `everyMs` until it is true; bounded by
// the deadline and so by an iteration count.
export async function waitUntil (done, { deadline, everyMs, what }) {
  const maxRounds = Math.ceil((deadline - now()) / everyMs) + 1
  for (let i = 0; i < maxRounds; i++) {
    if (await done()) return
    checkDeadline(deadline, what)
    await sleep(everyMs)
  }
  throw new Error(`BENCH_TIMEOUT passed while ${what}`)
}

// The one JSON line on stdout; resolves once it is flushed, so the
// process.exit that follows cannot cut it off.
export function emit (result) {
  return new Promise(resolve => process.stdout.write(JSON.stringify(result) + '\n', resolve))
}

export function packageVersion (name) {
  const url = new URL(`./node_modules/${name}/package.json`, import.meta.url)
  return JSON.parse(readFileSync(url, 'utf8')).version
}

// Runs the workload named on the command line; any error is a non-zero exit
// with the reason on stderr, as the protocol asks.
export async function main (workloads) {
  const name = process.argv[2]
  if (!Object.hasOwn(workloads, name)) {
    fail(`usage: ${process.argv[1]} ${Object.keys(workloads).join('|')}`)
  }
  try {
    const env = readEnv()
    const deadline = startGuard(env.timeout)
    const result = await workloads[name](env, deadline)
    await emit(result)
    process.exit(0)
  } catch (err) {
    fail(err)
  }
}

// A fresh connection for one statement or a few: emptying tables, VACUUM,
// the acknowledgement checks.
export async function withClient (url, fn) {
  const client = new pg.Client({ connectionString: url, application_name: 'bench-driver' })
  await client.connect()
  try {
    return await fn(client)
  } finally {
    await client.end()
  }
}

// TRUNCATE rather than DELETE: a DELETE leaves dead rows and bloated indexes
// that the next workload would pay for (and that a transaction the benchmark
// holds open would keep alive), so a run would depend on the one before.
// The Rust benchmark resets commitq's tables the same way.
export async function emptyTables (url, tables) {
  await withClient(url, c => c.query(`TRUNCATE ${tables.join(', ')}`))
}

// VACUUM refuses to run inside a transaction block, so one table per call.
export async function vacuumAnalyze (url, tables) {
  await withClient(url, async c => {
    for (const t of tables) await c.query(`VACUUM ANALYZE ${t}`)
  })
}

// Calls `enqueueChunk(count)` until `total` jobs are in; returns jobs/s from
// the first call to the last commit.
export async function bulk (total, enqueueChunk, deadline) {
  const start = now()
  for (let done = 0; done < total;) {
    checkDeadline(deadline, 'bulk enqueueing')
    const count = Math.min(BULK_CHUNK, total - done)
    await enqueueChunk(count)
    done += count
  }
  return total / ((now() - start) / 1000)
}

// `single`: every producer calls `enqueue()` (one job, one transaction) in a
// loop until `seconds` have passed; returns jobs/s over all of them.
export async function singleRate (producers, seconds, deadline) {
  const start = now()
  const end = Math.min(start + seconds * 1000, deadline)
  // A count bound besides the clock: no loop runs unbounded even if the
  // clock misbehaves (a million commits a second is far above any real rate).
  const maxEach = seconds * 1_000_000
  const counts = await Promise.all(producers.map(async enqueue => {
    let n = 0
    while (n < maxEach && now() < end) {
      await enqueue()
      n++
    }
    return n
  }))
  const total = counts.reduce((a, b) => a + b, 0)
  return total / ((now() - start) / 1000)
}

// Exactly-once bookkeeping for the drain: job ids as handlers see them.
export class SeenIds {
  constructor (expected) {
    this.expected = expected
    this.ids = new Set()
    this.duplicates = 0
  }

  see (id) {
    const key = String(id)
    if (this.ids.has(key)) this.duplicates++
    else this.ids.add(key)
  }

  get complete () { return this.ids.size >= this.expected }

  check () {
    if (this.duplicates) throw new Error(`${this.duplicates} jobs were handled more than once`)
    if (this.ids.size !== this.expected) {
      throw new Error(`handled ${this.ids.size} distinct jobs, expected ${this.expected}`)
    }
  }
}

// The latency workload's clocks, indexed by job number: when the enqueue's
// commit returned and when the handler started. Both in this process's
// monotonic clock.
export class LatencyLog {
  constructor (total) {
    if (total < 1) throw new Error('latency needs BENCH_RATE and BENCH_SECONDS of at least 1')
    this.total = total
    this.committed = new Float64Array(total).fill(NaN)
    this.started = new Float64Array(total).fill(NaN)
    this.handled = 0
    this.bad = 0
  }

  commit (n) { this.committed[n] = now() }

  // Called first thing in the handler.
  start (n) {
    if (!Number.isInteger(n) || n < 0 || n >= this.total || !Number.isNaN(this.started[n])) {
      this.bad++ // a duplicate or a job this run did not enqueue
      return
    }
    this.started[n] = now()
    this.handled++
  }

  get complete () { return this.handled >= this.total }

  // p50/p99/max with the same nearest-rank indexing as the Rust benchmark.
  summary () {
    if (this.bad) throw new Error(`${this.bad} jobs were handled twice or were not enqueued by this run`)
    if (this.handled !== this.total) throw new Error(`handled ${this.handled} of ${this.total} jobs`)
    const ms = new Float64Array(this.total)
    for (let i = 0; i < this.total; i++) {
      // A handler can start before the producer notes the commit: count 0.
      ms[i] = Math.max(0, this.started[i] - this.committed[i])
    }
    ms.sort()
    const round = x => Math.round(x * 1000) / 1000
    return {
      p50_ms: round(ms[Math.floor(ms.length / 2)]),
      p99_ms: round(ms[Math.floor(ms.length * 99 / 100)]),
      max_ms: round(ms[ms.length - 1]),
      jobs: this.total
    }
  }
}

// `latency` producers: LATENCY_PRODUCERS connections share `rate` jobs/s
// until `log.total` jobs are in; producer p enqueues jobs p, p+P, ... each at its slot on a
// steady schedule (late ones go at once, as a ticker would).
export async function produceAtRate (enqueuers, rate, log, deadline) {
  const total = log.total
  const start = now()
  await Promise.all(enqueuers.map(async (enqueue, p) => {
    for (let n = p; n < total; n += enqueuers.length) {
      checkDeadline(deadline, 'producing the latency workload')
      const wait = start + (n * 1000) / rate - now()
      if (wait > 0) await sleep(wait)
      await enqueue(n)
      log.commit(n)
    }
  }))
  // The latencies still hold when the enqueues cannot keep up, but they are
  // then at a lower rate than asked: say so next to the result.
  const reached = total / ((now() - start) / 1000)
  if (reached < 0.95 * rate) {
    process.stderr.write(`warning: the producers reached ${reached.toFixed(0)} of BENCH_RATE=${rate} jobs/s\n`)
  }
}
