// graphile-worker driver for `make bench` (protocol: ../README.md).
//
//   BENCH_URL=postgres://postgres@127.0.0.1:54329/gw node graphile-worker.mjs setup|bulk|drain|single|latency
//
// The worker runs in this process through the library API (`run`), with the
// batching settings of graphile-worker's performance page
// (https://worker.graphile.org/docs/performance): a local queue of 500 jobs
// fetched per query and job completions batched (`completeJobBatchDelay: 0`).
import { EventEmitter } from 'node:events'
import { Logger, makeWorkerUtils, run, runMigrations } from 'graphile-worker'
import pg from 'pg'
import {
  BULK_CHUNK, LATENCY_PRODUCERS, LATENCY_WARMUP_MS, LatencyLog, PAYLOAD, SeenIds,
  bulk, emptyTables, main, now, packageVersion, produceAtRate, singleRate,
  sleep, vacuumAnalyze, waitUntil, withClient
} from './common.mjs'

const TASK = 'bench'
const LOCAL_QUEUE_SIZE = 500
const POLL_INTERVAL_MS = 2000 // the default; new jobs arrive by LISTEN/NOTIFY
const JOB_TABLES = ['graphile_worker._private_jobs', 'graphile_worker._private_job_queues']
// _private_tasks keeps the task's row across workloads (its id is stable);
// it is vacuumed with the job tables but never emptied.
const VACUUM_TABLES = [...JOB_TABLES, 'graphile_worker._private_tasks']

// The prepared statement an application would use to enqueue in its own
// transaction: graphile-worker's SQL API, one job per statement.
const ADD_JOB = { name: 'bench_add_job', text: 'SELECT graphile_worker.add_job($1, $2::json)' }

// Worker's warnings and errors go to stderr (stdout carries only the result
// line). Its info level logs a line per job, which would measure the
// terminal rather than the queue, so it is dropped with debug.
const logger = new Logger(() => (level, message) => {
  if (level === 'error' || level === 'warning') process.stderr.write(`[graphile-worker ${level}] ${message}\n`)
})

function preset (env, events) {
  return {
    worker: {
      connectionString: env.url,
      concurrentJobs: env.concurrency,
      // The option's own advice: concurrentJobs + 2 or 10, whichever is larger.
      maxPoolSize: Math.max(10, env.concurrency + 2),
      pollInterval: POLL_INTERVAL_MS,
      localQueue: { size: LOCAL_QUEUE_SIZE },
      completeJobBatchDelay: 0,
      failJobBatchDelay: 0,
      logger,
      events
    }
  }
}

// Written by `setup`, which the benchmark runs with BENCH_CONCURRENCY=1: the
// line names the setting, not that run's value.
function configLine () {
  return 'graphile-worker run() in one Node process: concurrentJobs=BENCH_CONCURRENCY, ' +
    'maxPoolSize=max(10, BENCH_CONCURRENCY+2), ' +
    `localQueue.size=${LOCAL_QUEUE_SIZE}, completeJobBatchDelay=0, failJobBatchDelay=0, ` +
    `pollInterval=${POLL_INTERVAL_MS}ms, logger warnings+errors only; ` +
    `bulk: WorkerUtils.addJobs, ${BULK_CHUNK} jobs per call; ` +
    'single/latency: SELECT graphile_worker.add_job(...) prepared, one job per transaction; ' +
    `latency: ${LATENCY_PRODUCERS} producer connections`
}

// Runs `fn(addChunk)` with a WorkerUtils whose addChunk(count) enqueues that
// many jobs in one addJobs call (one statement, one transaction).
async function withBulkEnqueue (env, fn) {
  const utils = await makeWorkerUtils({ preset: preset(env) })
  const specs = Array.from({ length: BULK_CHUNK }, () => ({ identifier: TASK, payload: PAYLOAD }))
  try {
    return await fn(count => utils.addJobs(count === BULK_CHUNK ? specs : specs.slice(0, count)))
  } finally {
    await utils.release()
  }
}

// Starts the worker with `handler` as the bench task. A job that throws
// would be retried later and the run would stall until BENCH_TIMEOUT, so a
// handler error fails the run at once instead.
async function startWorker (env, handler) {
  const events = new EventEmitter()
  const errors = []
  events.on('job:error', ({ error }) => errors.push(error))
  const runner = await run({
    preset: preset(env, events),
    taskList: { [TASK]: handler },
    parsedCronItems: [], // no crontab file lookup
    noHandleSignals: true // the benchmark's signals end the process at once
  })
  return { runner, errors }
}

function throwIfErrors (errors) {
  if (errors.length) throw new Error(`${errors.length} jobs failed, first: ${errors[0]}`)
}

// Connections, each with a function that enqueues one job per call.
async function producers (env, count) {
  const clients = []
  for (let i = 0; i < count; i++) {
    const c = new pg.Client({ connectionString: env.url, application_name: 'bench-producer' })
    await c.connect()
    clients.push(c)
  }
  const enqueue = (c, payload) => c.query({ ...ADD_JOB, values: [TASK, JSON.stringify(payload)] })
  const close = () => Promise.all(clients.map(c => c.end()))
  return { clients, enqueue, close }
}

await main({
  async setup (env) {
    await runMigrations({ preset: preset(env) })
    return { system: 'graphile-worker', version: packageVersion('graphile-worker'), config: configLine() }
  },

  async bulk (env, deadline) {
    await emptyTables(env.url, JOB_TABLES)
    const rate = await withBulkEnqueue(env, add => bulk(env.jobs, add, deadline))
    return { rate }
  },

  async drain (env, deadline) {
    await emptyTables(env.url, JOB_TABLES)
    await withBulkEnqueue(env, add => bulk(env.jobs, add, deadline))
    await vacuumAnalyze(env.url, VACUUM_TABLES)

    const seen = new SeenIds(env.jobs)
    return await withClient(env.url, async check => {
      const start = now()
      const { runner, errors } = await startWorker(env, async (_payload, helpers) => {
        seen.see(helpers.job.id)
      })
      // Every job handled, then every completion committed: graphile-worker
      // deletes a job when it completes, so the last acknowledgement is the
      // moment the jobs table is empty.
      await waitUntil(() => { throwIfErrors(errors); return seen.complete },
        { deadline, everyMs: 2, what: 'waiting for the handlers' })
      await waitUntil(async () => {
        const { rows } = await check.query('SELECT NOT EXISTS (SELECT FROM graphile_worker._private_jobs) AS empty')
        return rows[0].empty
      }, { deadline, everyMs: 2, what: 'waiting for the completions to commit' })
      const rate = env.jobs / ((now() - start) / 1000)
      await runner.stop()
      throwIfErrors(errors)
      seen.check()
      return { rate }
    })
  },

  async single (env, deadline) {
    await emptyTables(env.url, JOB_TABLES)
    const p = await producers(env, env.clients)
    try {
      const rate = await singleRate(p.clients.map(c => () => p.enqueue(c, PAYLOAD)), env.seconds, deadline)
      return { rate }
    } finally {
      await p.close()
    }
  },

  async latency (env, deadline) {
    await emptyTables(env.url, JOB_TABLES)
    const lat = new LatencyLog(env.rate * env.seconds)
    const { runner, errors } = await startWorker(env, async payload => { lat.start(payload.n) })
    const p = await producers(env, LATENCY_PRODUCERS)
    try {
      await sleep(LATENCY_WARMUP_MS)
      await produceAtRate(p.clients.map(c => n => p.enqueue(c, { ...PAYLOAD, n })), env.rate, lat, deadline)
      await waitUntil(() => { throwIfErrors(errors); return lat.complete },
        { deadline, everyMs: 20, what: 'waiting for the last latency jobs' })
    } finally {
      await p.close()
      await runner.stop()
    }
    throwIfErrors(errors)
    return lat.summary()
  }
})

