// Agenda 6 (with @agendajs/mongo-backend) measured on the server scripts/bench started: the
// baseline of issue 22's Agenda rows. Each mode prints one JSON line on stdout.
//
//   node bench.mjs enqueue URL DB SECONDS
//       one client calling `agenda.now('noop')` in a loop, nothing processing: {calls, per_s}
//   node bench.mjs drain URL DB N PROCESSES CONCURRENCY PROCESS_EVERY_MS CAP_SECONDS
//       N no-op jobs saved disabled; PROCESSES worker processes start (each `maxConcurrency`
//       and the job's `concurrency` set to CONCURRENCY, polling every PROCESS_EVERY_MS); once
//       all are up the jobs are enabled by one update, and the clock runs from then to the
//       N-th completion, as the workers report them, or stopped CAP_SECONDS after the start
//       and rated by the completions so far:
//       {jobs, completed, seconds, jobs_per_s, process_every_ms, capped}
//       Each job definition's `lockLimit` is CONCURRENCY too: by default (0) a process locks
//       every due job, one findOneAndUpdate each, before it runs any of them.
//   node bench.mjs worker URL DB CONCURRENCY PROCESS_EVERY_MS   (started by drain)
//
// Agenda's MongoDB backend polls (no notification channel is configured, as by default):
// `processEvery` is 5 s unless set. A process locks every due job it finds, one
// findOneAndUpdate each, then runs CONCURRENCY at a time.
import { fork } from 'node:child_process';
import { Agenda } from 'agenda';
import { MongoBackend } from '@agendajs/mongo-backend';
import { MongoClient } from 'mongodb';

const [mode, url, dbName, ...rest] = process.argv.slice(2);

async function open(extra = {}) {
  const client = await MongoClient.connect(url);
  const db = client.db(dbName);
  const agenda = new Agenda({ backend: new MongoBackend({ mongo: db }), ...extra });
  await agenda.ready;
  return { client, db, agenda };
}

async function enqueue(seconds) {
  const { client, db, agenda } = await open();
  await db.dropDatabase();
  await agenda.now('noop'); // connect, create the indexes: not timed
  let calls = 0;
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  while (performance.now() < end) {
    await agenda.now('noop');
    calls += 1;
  }
  const elapsed = (performance.now() - t0) / 1000;
  await db.dropDatabase();
  await client.close();
  return { calls, per_s: calls / elapsed };
}

async function worker(concurrency, processEvery) {
  const { agenda } = await open({ processEvery, maxConcurrency: concurrency, defaultConcurrency: concurrency });
  agenda.define('noop', async () => {}, { concurrency, lockLimit: concurrency });
  agenda.on('complete', () => process.send({ done: 1 }));
  await agenda.start();
  process.send({ ready: true });
  process.on('message', async (m) => {
    if (m === 'stop') {
      await agenda.stop(true);
      process.exit(0);
    }
  });
}

async function drain(n, processes, concurrency, processEvery, capSeconds) {
  const { client, db, agenda } = await open();
  await db.dropDatabase();
  // Saved disabled (Agenda's lock query skips `disabled: true`), enabled with one update once
  // every worker is up: the same start as Switchyard's paused queue being resumed.
  for (let i = 0; i < n; i += 50) {
    await Promise.all(Array.from({ length: Math.min(50, n - i) }, () => agenda.create('noop').disable().save()));
  }
  const jobs = db.collection('agendaJobs');
  if ((await jobs.countDocuments({ disabled: true })) !== n) throw new Error('jobs not saved disabled');
  let t0 = 0;
  let done = 0;
  let last = 0;
  let ready = 0;
  const tick = setInterval(() => console.error(`agenda drain: ${ready}/${processes} workers, ${done}/${n} done`), 5000);
  const finished = new Promise((resolve) => {
    const kids = [];
    for (let p = 0; p < processes; p++) {
      const kid = fork(new URL(import.meta.url).pathname, ['worker', url, dbName, String(concurrency), String(processEvery)]);
      kid.on('message', (m) => {
        if (m.ready) {
          ready += 1;
          if (ready === processes) {
            t0 = Date.now();
            setTimeout(() => resolve(kids), capSeconds * 1000);
            jobs.updateMany({}, { $set: { disabled: false } });
          }
        }
        if (m.done) {
          done += 1;
          last = Date.now();
          if (done === n) resolve(kids);
        }
      });
      kids.push(kid);
    }
  });
  const kids = await finished;
  const capped = done < n;
  if (capped) last = Date.now();
  clearInterval(tick);
  // A stop unlocks the jobs a process holds; on a swamped server that can take minutes, so
  // a worker still up after 10 s is killed (the figures are taken already).
  const exited = kids.map((kid) => new Promise((r) => kid.on('exit', r)));
  for (const kid of kids) kid.send('stop');
  const killer = setTimeout(() => kids.forEach((kid) => kid.kill('SIGKILL')), 10_000);
  await Promise.all(exited);
  clearTimeout(killer);
  const finishedInDb = await jobs.countDocuments({ lastFinishedAt: { $ne: null } });
  await db.dropDatabase();
  await client.close();
  if (finishedInDb < done) throw new Error(`${done} reported, ${finishedInDb} finished in the database`);
  if (ready !== processes) throw new Error(`${ready}/${processes} workers started`);
  const seconds = (last - t0) / 1000;
  return { jobs: n, completed: done, seconds, jobs_per_s: done / seconds, process_every_ms: processEvery, capped };
}

let result;
if (mode === 'enqueue') result = await enqueue(Number(rest[0]));
else if (mode === 'drain') result = await drain(...rest.slice(0, 5).map(Number));
else if (mode === 'worker') await worker(...rest.slice(0, 2).map(Number));
else throw new Error(`unknown mode ${mode}`);
if (result) {
  console.log(JSON.stringify(result));
  process.exit(0);
}
