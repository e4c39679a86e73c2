// pg-boss driver for `make bench` (protocol: ../README.md).
//
//   BENCH_URL=postgres://postgres@127.0.0.1:54329/boss node pg-boss.mjs setup|bulk|drain|single|latency
//
// pg-boss 10 runs handlers through polling workers: each `work()` call adds
// one worker that fetches up to `batchSize` jobs, awaits the handler on the
// batch, completes the batch in one statement and then sleeps out the rest
// of `pollingIntervalSeconds` (0.5 s at least) before it fetches again, jobs
// or not. So a worker's rate is bounded by batchSize / 0.5 s and the only
// documented ways up are more workers and bigger batches: 16 workers of one
// job each would drain 32 jobs/s. The drain and latency workloads run
// BENCH_CONCURRENCY workers (one handler call each, so that many handlers at
// once, each running its batch's jobs in turn) with the smallest poll
// interval and batches of BATCH_SIZE.
import PgBoss from 'pg-boss'
import {
  BULK_CHUNK, LATENCY_PRODUCERS, LATENCY_WARMUP_MS, LatencyLog, PAYLOAD, SeenIds,
  bulk, emptyTables, main, now, packageVersion, produceAtRate, singleRate,
  sleep, vacuumAnalyze, waitUntil, withClient
} from './common.mjs'

const QUEUE = 'bench'
// pg-boss documents no batch size for throughput; 500 is what
// graphile-worker's performance page fetches per query (localQueue.size), so
// both systems pull as many jobs per round trip.
const BATCH_SIZE = 500
const POLLING_INTERVAL_SECONDS = 0.5 // pg-boss refuses anything lower
// pgboss.job is partitioned by queue; TRUNCATE and VACUUM of the parent
// reach the queue's partition. pgboss.queue keeps the queue's row.
const JOB_TABLES = ['pgboss.job', 'pgboss.archive']
const VACUUM_TABLES = [...JOB_TABLES, 'pgboss.queue']

// A pool connection per worker for its fetch, and two spare for the batch
// completions, which a pg-boss worker sends without awaiting them; the same
// size as graphile-worker's pool.
const workerPoolSize = env => env.concurrency + 2

// One PgBoss instance with a pool of `max` connections. Maintenance
// (archiving, expiry) and cron scheduling are off: they run on timers, and a
// benchmark run must not depend on when one fires.
async function startBoss (env, max) {
  const boss = new PgBoss({
    connectionString: env.url,
    max,
    application_name: 'bench-pgboss',
    supervise: false,
    schedule: false
  })
  // pg-boss reports worker and pool errors as events; without a listener
  // EventEmitter would throw them, with one the run fails at the next check.
  const errors = []
  boss.on('error', error => errors.push(error))
  await boss.start() // installs or checks the schema (migrate: true)
  await boss.createQueue(QUEUE) // a no-op when it exists
  const stop = () => boss.stop({ graceful: true, timeout: 5000 })
  return { boss, errors, stop }
}

function throwIfErrors (errors) {
  if (errors.length) throw new Error(`pg-boss reported ${errors.length} errors, first: ${errors[0]?.message ?? errors[0]}`)
}

// Written by `setup`, which the benchmark runs with BENCH_CONCURRENCY=1: the
// line names the setting, not that run's value.
function configLine () {
  return 'pg-boss in one Node process: BENCH_CONCURRENCY work() workers, ' +
    `each batchSize=${BATCH_SIZE}, pollingIntervalSeconds=${POLLING_INTERVAL_SECONDS}, ` +
    'one handler call per batch running its jobs in turn; pool max=BENCH_CONCURRENCY+2; ' +
    'supervise=false, schedule=false (no maintenance or cron timers); ' +
    `bulk: insert(), ${BULK_CHUNK} jobs per call; single/latency: send(), one job per transaction; ` +
    `latency: ${LATENCY_PRODUCERS} producer connections (a second PgBoss instance)`
}

// Enqueues `count` jobs in one insert() call: one statement, one transaction.
function bulkEnqueuer (boss) {
  const jobs = Array.from({ length: BULK_CHUNK }, () => ({ name: QUEUE, data: PAYLOAD }))
  return count => boss.insert(count === BULK_CHUNK ? jobs : jobs.slice(0, count))
}

// Registers the workers; `handle(job)` runs for every job of every batch.
async function startWorkers (env, boss, handle) {
  const options = { batchSize: BATCH_SIZE, pollingIntervalSeconds: POLLING_INTERVAL_SECONDS }
  for (let i = 0; i < env.concurrency; i++) {
    await boss.work(QUEUE, options, async jobs => {
      for (const job of jobs) handle(job)
    })
  }
}

await main({
  async setup (env) {
    const { errors, stop } = await startBoss(env, 2)
    await stop()
    throwIfErrors(errors)
    return { system: 'pg-boss', version: packageVersion('pg-boss'), config: configLine() }
  },

  async bulk (env, deadline) {
    await emptyTables(env.url, JOB_TABLES)
    const { boss, errors, stop } = await startBoss(env, 2)
    const rate = await bulk(env.jobs, bulkEnqueuer(boss), deadline)
    await stop()
    throwIfErrors(errors)
    return { rate }
  },

  async drain (env, deadline) {
    await emptyTables(env.url, JOB_TABLES)
    const { boss, errors, stop } = await startBoss(env, workerPoolSize(env))
    await bulk(env.jobs, bulkEnqueuer(boss), deadline)
    await vacuumAnalyze(env.url, VACUUM_TABLES)

    const seen = new SeenIds(env.jobs)
    return await withClient(env.url, async check => {
      const start = now()
      await startWorkers(env, boss, job => seen.see(job.id))
      // Every job handled, then every completion committed: pg-boss marks a
      // job `completed` (and keeps the row until maintenance archives it), so
      // the last acknowledgement is the moment no job of the queue is in
      // another state.
      await waitUntil(() => { throwIfErrors(errors); return seen.complete },
        { deadline, everyMs: 2, what: 'waiting for the handlers' })
      const open = `SELECT NOT EXISTS (SELECT FROM pgboss.job WHERE name = $1 AND state <> 'completed') AS done`
      await waitUntil(async () => (await check.query(open, [QUEUE])).rows[0].done,
        { deadline, everyMs: 2, what: 'waiting for the completions to commit' })
      const rate = env.jobs / ((now() - start) / 1000)
      await stop()
      throwIfErrors(errors)
      seen.check()
      const { rows } = await check.query('SELECT count(*)::int AS n FROM pgboss.job WHERE name = $1', [QUEUE])
      if (rows[0].n !== env.jobs) throw new Error(`${rows[0].n} completed jobs in pgboss.job, expected ${env.jobs}`)
      return { rate }
    })
  },

  async single (env, deadline) {
    await emptyTables(env.url, JOB_TABLES)
    // BENCH_CLIENTS loops over a pool of as many connections: each send() is
    // one INSERT on a connection of its own, committed on its own.
    const { boss, errors, stop } = await startBoss(env, env.clients)
    const loops = Array.from({ length: env.clients }, () => () => boss.send(QUEUE, PAYLOAD))
    const rate = await singleRate(loops, env.seconds, deadline)
    await stop()
    throwIfErrors(errors)
    return { rate }
  },

  async latency (env, deadline) {
    await emptyTables(env.url, JOB_TABLES)
    const lat = new LatencyLog(env.rate * env.seconds)
    const worker = await startBoss(env, workerPoolSize(env))
    // The producers' own instance, so their sends never queue behind the
    // workers' fetches for a pool connection.
    const producer = await startBoss(env, LATENCY_PRODUCERS)
    try {
      await startWorkers(env, worker.boss, job => lat.start(job.data.n))
      await sleep(LATENCY_WARMUP_MS)
      const sends = Array.from({ length: LATENCY_PRODUCERS },
        () => n => producer.boss.send(QUEUE, { ...PAYLOAD, n }))
      await produceAtRate(sends, env.rate, lat, deadline)
      await waitUntil(() => { throwIfErrors(worker.errors); return lat.complete },
        { deadline, everyMs: 20, what: 'waiting for the last latency jobs' })
    } finally {
      await producer.stop()
      await worker.stop()
    }
    throwIfErrors(worker.errors)
    throwIfErrors(producer.errors)
    return lat.summary()
  }
})
