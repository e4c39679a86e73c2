// A worker whose handler writes, tells the test, and hangs until the test
// kills it, before the job's transaction commits (commitq_example.test.js).
import { setTimeout as sleep } from 'node:timers/promises';
import { Worker, sendReceipt } from './commitq_example.js';

await new Worker({}, 'killed', {
  send_receipt: async (conn, job) => {
    await sendReceipt(conn, job);
    process.send('written');
    await sleep(60_000);
  },
}, { lease: 1 }).run();
