// A Wasmspawner plugin in JavaScript: Slurm, against plugin API 0.2
// (wit/since_v0.2.0), built with componentize-js (`cargo xtask js-plugin`
// → target/plugins/js-slurm.wasm).
//
// The same behaviour as the Python example (examples/python-plugin, which
// stays at API 0.1): a typed form, a site rule in `validate`,
// `sbatch --parsable` with the batch script on stdin (the hub's secrets
// reach the job through the host, never this code), one `squeue` for every
// job, and `unknown` -- never `done` -- when the scheduler does not answer.
// New in 0.2 and used here: capabilities as a list of cases, the job's time
// limit and end in status, and `findJobs`: every job is named
// `jupyterhub-<spawn id>` and found again with one `squeue --name=…`.
//
// Site config (`[instances.X.config]`): `[partition]` (or `[queue]`)
// `choices` and `default`, `[nprocs]` and `[runtime]` (minutes) `max` and
// `default`, and `host_suffix`.
//
// WIT in JavaScript (componentize-js): records are objects with camelCase
// fields, variants `{ tag, val }`, `option<T>` a value or `undefined`,
// `list<u8>` a Uint8Array; returning from a `result` export is `ok`,
// throwing `{ tag, val }` is `err`; an import's `err` is thrown as an Error
// whose `payload` is the value.

import { run } from 'wasmspawner:plugin/process@0.2.0';
import { log } from 'wasmspawner:plugin/log@0.2.0';

const API_VERSION = '0.2.0';
const JOB_NAME = 'jupyterhub';

const fail = (tag, val) => ({ tag, val });

function settings(config) {
  let c;
  try {
    c = JSON.parse(config || '{}');
  } catch (e) {
    throw fail('config', `config is not JSON: ${e}`);
  }
  const queue = c.partition ?? c.queue ?? {};
  const partitions = queue.choices ?? ['standard'];
  if (!Array.isArray(partitions) || !partitions.every((p) => typeof p === 'string' && /^[A-Za-z0-9_-]+$/.test(p))) {
    throw fail('config', 'partition.choices: give partition names, e.g. ["standard"]');
  }
  const limit = (key, top, dflt) => {
    const f = c[key] ?? {};
    const most = f.max ?? top;
    const d = f.default ?? dflt;
    if (!(Number.isInteger(most) && Number.isInteger(d) && 1 <= d && d <= most && most <= top)) {
      throw fail('config', `${key}: max and default must be whole numbers with 1 <= default <= max <= ${top}`);
    }
    return [most, d];
  };
  const [maxNprocs, nprocs] = limit('nprocs', 64, 1);
  const [maxMinutes, minutes] = limit('runtime', 1440, 60);
  return {
    partitions,
    defaultPartition: queue.default ?? partitions[0],
    maxNprocs,
    nprocs,
    maxMinutes,
    minutes,
    hostSuffix: c.host_suffix ?? '',
  };
}

const command = (program, args, stdin = new Uint8Array(), spawnEnv = false) => ({
  program,
  args,
  stdin,
  env: [],
  spawnEnv,
  timeoutMs: 0,
});

const text = (bytes) => new TextDecoder().decode(bytes);

// The host refused or could not run the program.
const why = (e) => (e && e.payload ? `${e.payload.tag}: ${e.payload.val}` : String(e));

function runChecked(cmd) {
  try {
    return run(cmd);
  } catch (e) {
    throw fail('capability', `${cmd.program}: ${why(e)}`);
  }
}

function address(s, host) {
  if (!host || host === 'n/a' || host === '(null)') return undefined;
  return host.includes('.') ? host : host + s.hostSuffix;
}

// A Slurm time (`[D-]HH:MM:SS`, `MM:SS`, `UNLIMITED`) in seconds.
function seconds(t) {
  const m = /^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)$/.exec(t);
  if (!m) return undefined;
  const [, d, h, min, sec] = m.map((x) => (x === undefined ? 0 : Number(x)));
  return ((d * 24 + h) * 60 + min) * 60 + sec;
}

// A Slurm timestamp (`2026-12-01T10:00:00`, local time of the controller,
// read as UTC here) in seconds since the epoch; `N/A`, `Unknown` → none.
function epoch(t) {
  if (!/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$/.test(t)) return undefined;
  const ms = Date.parse(`${t}Z`);
  return Number.isFinite(ms) ? BigInt(Math.floor(ms / 1000)) : undefined;
}

function jobState(s, state, host, reason, limit, start, end) {
  const timeLimit = {
    limitSecs: seconds(limit) === undefined ? undefined : BigInt(seconds(limit)),
    endsAt: epoch(end),
  };
  switch (state) {
    case 'PENDING':
    case 'CONFIGURING':
    case 'REQUEUED':
    case 'SUSPENDED':
      return {
        tag: 'pending',
        val: {
          reason: `${state.toLowerCase()}: ${reason}`,
          expectedStart: state === 'PENDING' ? epoch(start) : undefined,
          queuePosition: undefined,
          timeLimit: { limitSecs: timeLimit.limitSecs, endsAt: undefined },
          details: [],
        },
      };
    case 'RUNNING':
      return {
        tag: 'running',
        val: { host: address(s, host), startedAt: epoch(start), timeLimit, details: [] },
      };
    case 'COMPLETING':
      return { tag: 'done', val: { exitCode: undefined, reason: 'completing' } };
    case 'COMPLETED':
      return { tag: 'done', val: { exitCode: 0, reason: 'completed' } };
    case 'FAILED':
    case 'CANCELLED':
    case 'TIMEOUT':
    case 'NODE_FAIL':
    case 'PREEMPTED':
    case 'OUT_OF_MEMORY':
    case 'BOOT_FAIL':
    case 'DEADLINE':
      return { tag: 'done', val: { exitCode: undefined, reason: `${state.toLowerCase()}: ${reason}` } };
    default:
      return { tag: 'unknown', val: `squeue reported state ${JSON.stringify(state)}` };
  }
}

const use = (program, spawnEnv = false) => ({ tag: 'program', val: { program, args: ['**'], spawnEnv } });

// squeue's answer, or why it proves nothing.
function squeue(args) {
  let out;
  try {
    out = run(command('squeue', args));
  } catch (e) {
    return { error: `squeue could not run: ${why(e)}` };
  }
  if (out.exitCode !== 0 || out.truncated) {
    const e = `squeue exited ${out.exitCode}: ${text(out.stderr).trim().slice(0, 200)}`;
    log('warn', e);
    return { error: e };
  }
  return { lines: text(out.stdout).split('\n').filter((l) => l.trim() !== '') };
}

export const spawner = {
  describe() {
    return {
      name: 'js-slurm',
      version: '0.1.0',
      apiVersion: API_VERSION,
      description: 'Slurm, written in JavaScript with componentize-js.',
      capabilities: [use('sbatch', true), use('squeue'), use('scancel')],
    };
  },

  form(config, user) {
    const s = settings(config);
    const integer = (max, unit) => ({ tag: 'integer', val: { min: 1n, max: BigInt(max), step: undefined, unit } });
    return {
      fields: [
        {
          id: 'partition',
          label: 'Partition',
          help: 'Where the job runs.',
          default: s.defaultPartition,
          required: true,
          kind: { tag: 'choice', val: s.partitions.map((p) => ({ value: p, label: p })) },
        },
        { id: 'nprocs', label: 'CPU cores', help: '', default: String(s.nprocs), required: true, kind: integer(s.maxNprocs, undefined) },
        {
          id: 'runtime',
          label: 'Run time',
          help: 'How long the server may run.',
          default: String(s.minutes),
          required: true,
          kind: integer(s.maxMinutes, 'min'),
        },
      ],
      profiles: [],
    };
  },

  validate(config, user, options) {
    // The host has checked types, ranges and choices against the form.
    // A site rule: sessions over 4 hours are for staff.
    const runtime = options.find((o) => o.field === 'runtime');
    if (runtime && Number(runtime.value.val) > 240 && !user.groups.includes('staff')) {
      throw [{ field: 'runtime', message: 'sessions over 4 hours (240 minutes) are for staff' }];
    }
    return options;
  },

  submit(config, job) {
    const s = settings(config);
    const values = Object.fromEntries(job.options.map((o) => [o.field, o.value.val]));
    const minutes = Number(values.runtime ?? s.minutes);
    const quote = (a) => (/^[A-Za-z0-9_./=:,@%+-]+$/.test(a) ? a : `'${a.replaceAll("'", "'\\''")}'`);
    // The spawn id tags the job, for findJobs after a host crash.
    const name = /^[A-Za-z0-9_-]{1,64}$/.test(job.spawnId) ? `${JOB_NAME}-${job.spawnId}` : JOB_NAME;
    const script = [
      '#!/bin/bash',
      `#SBATCH --job-name=${name}`,
      `#SBATCH --partition=${values.partition ?? s.defaultPartition}`,
      `#SBATCH --cpus-per-task=${Number(values.nprocs ?? s.nprocs)}`,
      `#SBATCH --time=${Math.floor(minutes / 60)}:${String(minutes % 60).padStart(2, '0')}:00`,
      job.cmd.map(quote).join(' '),
      '',
    ].join('\n');
    const out = runChecked(command('sbatch', ['--parsable'], new TextEncoder().encode(script), true));
    const jobId = text(out.stdout).trim().split(';')[0];
    if (out.exitCode !== 0 || !/^\d+$/.test(jobId)) {
      throw fail('scheduler', `sbatch exited ${out.exitCode}: ${text(out.stderr).trim().slice(0, 500)}`);
    }
    return { jobId, state: '' };
  },

  status(config, jobs) {
    if (jobs.length === 0) return [];
    const s = settings(config);
    const ids = jobs.map((j) => j.jobId);
    const unknown = (m) => jobs.map(() => ({ tag: 'unknown', val: m }));
    const got = squeue(['--noheader', '--states=all', `--jobs=${ids.join(',')}`, '--format=%i|%T|%B|%r|%l|%S|%e']);
    if (got.error) return unknown(got.error);
    const seen = new Map();
    for (const line of got.lines) {
      const parts = line.trim().split('|');
      if (parts.length !== 7) return unknown(`squeue printed an unexpected line ${JSON.stringify(line.slice(0, 100))}`);
      const [id, state, host, reason, limit, start, end] = parts;
      seen.set(id, jobState(s, state, host, reason, limit, start, end));
    }
    // squeue answered and parsed: a job it does not list has ended.
    const left = { tag: 'done', val: { exitCode: undefined, reason: 'the job has left the queue' } };
    return ids.map((i) => seen.get(i) ?? left);
  },

  cancel(config, job) {
    const out = runChecked(command('scancel', [job.jobId]));
    const err = text(out.stderr);
    if (out.exitCode !== 0 && !err.includes('already completing or completed') && !err.includes('Invalid job id')) {
      throw fail('scheduler', `scancel exited ${out.exitCode}: ${err.trim().slice(0, 500)}`);
    }
  },

  findJobs(config, spawns) {
    if (spawns.length === 0) return [];
    const names = spawns.map((s) => `${JOB_NAME}-${s.spawnId}`);
    const got = squeue(['--noheader', `--name=${names.join(',')}`, '--format=%i|%j|%T']);
    if (got.error) throw fail('scheduler', got.error);
    const wanted = new Map(spawns.map((s) => [`${JOB_NAME}-${s.spawnId}`, s.spawnId]));
    const found = [];
    for (const line of got.lines) {
      const parts = line.trim().split('|');
      if (parts.length !== 3) throw fail('scheduler', `squeue printed an unexpected line ${JSON.stringify(line.slice(0, 100))}`);
      const [jobId, name, state] = parts;
      const spawnId = wanted.get(name);
      if (spawnId !== undefined && /^\d+$/.test(jobId) && !['COMPLETED', 'CANCELLED', 'FAILED', 'TIMEOUT'].includes(state)) {
        found.push({ spawnId, jobId, state: '' });
      }
    }
    return found;
  },
};
