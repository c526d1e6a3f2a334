#!/usr/bin/env node
// follow.mjs follows one shape with the official TypeScript client
// (@electric-sql/client, ShapeStream + Shape) and reports what it sees as
// JSON lines on stdout, for electrictest/interop_test.go.
//
// Usage:
//
//	node follow.mjs --url http://127.0.0.1:3000/v1/shape --table items \
//	    [--where 'done = $1' --param true ...] [--columns id,title] \
//	    [--replica full] [--secret S] [--log-requests] [--ignore-stdin]
//	    [--token JWT] [--header 'Name: value' ...] [--live-sse]
//
// Every option can also come from the environment: SHAPE_URL, SHAPE_TABLE,
// SHAPE_WHERE, SHAPE_PARAMS (a JSON array of strings), SHAPE_COLUMNS,
// SHAPE_REPLICA, SHAPE_SECRET, SHAPE_TOKEN, SHAPE_LIVE_SSE (true).
//
// --live-sse sets the client's liveSse option: live updates come over
// Server-Sent Events instead of long polls (the client falls back to long
// polling by itself when SSE connections keep closing at once).
//
// --token sends "Authorization: Bearer JWT" on every request (the
// client's headers option); --header adds any other request header. With
// --token, --table may be left out: a shapeseal proxy URL
// (/v1/shapes/{name}) names the shape itself and rejects a table param.
//
// Output, one JSON object per line on stdout:
//
//   - every message the ShapeStream delivers to its subscriber, as received
//     (change messages with values parsed by the client's default parser,
//     and control messages, including the synthetic must-refetch it
//     publishes on a 409), and the move-in and move-out event messages of
//     subquery shapes. JSON has no BigInt, so int8 values, which the
//     client parses to BigInt, are printed as decimal strings.
//   - {"rows": [...], "keys": [...]} every time the Shape notifies its
//     subscribers: the materialized rows, sorted by key (keys[i] is the
//     key of rows[i]).
//   - {"error": {...}} when the stream stops on an error it will not retry.
//
// The Shape of @electric-sql/client 1.5.26 ignores event messages: a row
// that leaves a subquery shape by a move-out stays in its rows (see
// proxy/subquery_interop_test.go).
//
// Diagnostics (and, with --log-requests, one line per HTTP exchange) go to
// stderr. The process exits with status 0 on SIGTERM, SIGINT or when stdin
// is closed (unless --ignore-stdin), and with status 1 after an error line.

import { parseArgs } from 'node:util'
import { ShapeStream, Shape } from '@electric-sql/client'

const { values: args } = parseArgs({
  options: {
    url: { type: 'string', default: process.env.SHAPE_URL },
    table: { type: 'string', default: process.env.SHAPE_TABLE },
    where: { type: 'string', default: process.env.SHAPE_WHERE },
    param: { type: 'string', multiple: true },
    columns: { type: 'string', default: process.env.SHAPE_COLUMNS },
    replica: { type: 'string', default: process.env.SHAPE_REPLICA },
    secret: { type: 'string', default: process.env.SHAPE_SECRET },
    token: { type: 'string', default: process.env.SHAPE_TOKEN },
    header: { type: 'string', multiple: true },
    'live-sse': { type: 'boolean', default: process.env.SHAPE_LIVE_SSE === 'true' },
    'log-requests': { type: 'boolean', default: false },
    'ignore-stdin': { type: 'boolean', default: false },
  },
  strict: true,
  allowPositionals: false,
})

function die(msg) {
  process.stderr.write(`follow.mjs: ${msg}\n`)
  process.exit(2)
}

if (!args.url) die('--url (or SHAPE_URL) is required')
if (!args.table && !args.token) die('--table (or SHAPE_TABLE) is required')

const headers = {}
for (const h of args.header ?? []) {
  const i = h.indexOf(':')
  if (i <= 0) die(`--header ${JSON.stringify(h)}: want 'Name: value'`)
  headers[h.slice(0, i).trim()] = h.slice(i + 1).trim()
}
if (args.token) headers.Authorization = `Bearer ${args.token}`

let whereParams = args.param
if (!whereParams && process.env.SHAPE_PARAMS) {
  try {
    whereParams = JSON.parse(process.env.SHAPE_PARAMS)
  } catch (e) {
    die(`SHAPE_PARAMS is not a JSON array: ${e.message}`)
  }
  if (!Array.isArray(whereParams)) die('SHAPE_PARAMS is not a JSON array')
  whereParams = whereParams.map(String)
}

const params = {}
if (args.table) params.table = args.table
if (args.where) params.where = args.where
if (whereParams && whereParams.length > 0) params.params = whereParams
if (args.columns) params.columns = args.columns.split(',')
if (args.replica) params.replica = args.replica
if (args.secret) params.secret = args.secret

// JSON.stringify cannot encode BigInt (int8 columns): print them as strings.
function toJSON(v) {
  return JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? x.toString() : x))
}

function emit(obj) {
  // stdout is a pipe in the test: writes are synchronous on POSIX.
  process.stdout.write(toJSON(obj) + '\n')
}

function describeError(err) {
  const out = { name: err?.name, message: String(err?.message ?? err) }
  if (err && typeof err === 'object') {
    if ('status' in err) out.status = err.status
    if ('url' in err) out.url = err.url
    if ('json' in err && err.json !== undefined) out.json = err.json
    if ('text' in err && err.text !== undefined) out.text = err.text
  }
  return out
}

const abort = new AbortController()

// A fetch that logs each exchange to stderr; it changes nothing else.
const fetchClient = async (input, init) => {
  const url = typeof input === 'string' ? input : input.url
  const started = Date.now()
  try {
    const res = await fetch(input, init)
    if (args['log-requests']) {
      const h = res.headers
      process.stderr.write(
        `follow.mjs: ${init?.method ?? 'GET'} ${url} -> ${res.status}` +
          ` handle=${h.get('electric-handle')} offset=${h.get('electric-offset')}` +
          ` cursor=${h.get('electric-cursor')} up-to-date=${h.has('electric-up-to-date')}` +
          ` (${Date.now() - started} ms)\n`
      )
    }
    return res
  } catch (e) {
    if (args['log-requests'] && !abort.signal.aborted) {
      process.stderr.write(`follow.mjs: ${init?.method ?? 'GET'} ${url} -> ${e}\n`)
    }
    throw e
  }
}

let failed = false

const stream = new ShapeStream({
  url: args.url,
  params,
  headers,
  signal: abort.signal,
  fetchClient,
  liveSse: args['live-sse'],
  // Returning nothing stops the stream: the error is reported, not retried.
  onError: (err) => {
    process.stderr.write(`follow.mjs: stream error: ${err?.stack ?? err}\n`)
  },
})

stream.subscribe(
  (messages) => {
    for (const m of messages) emit(m)
  },
  (err) => {
    failed = true
    emit({ error: describeError(err) })
    shutdown(1)
  }
)

const shape = new Shape(stream)
shape.subscribe(({ value }) => {
  const keys = Array.from(value.keys()).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))
  emit({ rows: keys.map((k) => value.get(k)), keys })
})

let stopping = false
function shutdown(code) {
  if (stopping) return
  stopping = true
  abort.abort()
  shape.unsubscribeAll()
  stream.unsubscribeAll()
  // Let pending stdout writes drain, then leave even if a request lingers.
  setImmediate(() => process.exit(code))
}

process.on('SIGTERM', () => shutdown(failed ? 1 : 0))
process.on('SIGINT', () => shutdown(failed ? 1 : 0))
if (!args['ignore-stdin']) {
  process.stdin.on('end', () => shutdown(failed ? 1 : 0))
  process.stdin.on('close', () => shutdown(failed ? 1 : 0))
  process.stdin.on('error', () => shutdown(failed ? 1 : 0))
  process.stdin.resume() // keep reading (and discarding) to notice EOF
}
