#!/usr/bin/env node
// ts-decode.mjs measures the official TypeScript client, @electric-sql/client,
// reading one shape log response held in memory: the TypeScript side of
// bench/clientdecode, the counterpart of the Go client's BenchmarkDecode.
//
// Usage:
//
//	node bench/ts-decode.mjs --client DIR --body FILE --schema FILE --rows N \
//	    [--count 5] [--time 1] [--warmup 2]
//
// DIR is the installed package (electrictest/interop/node_modules/
// @electric-sql/client); FILE the response body and its electric-schema
// header, as bench/clientdecode wrote them; N the number of change
// messages the body holds (checked on every pass).
//
// Each pass is what an application does for an initial sync: a new
// ShapeStream (subscribe: false, so it stops at up-to-date) whose
// fetchClient answers the one request with a fresh Response over the body's
// bytes, and a subscriber that counts the change messages until the
// up-to-date. That is the client's real path: its fetch wrappers,
// response.text(), MessageParser.parse (JSON.parse with the reviver that
// applies the default parser: int4 → Number, int8 → BigInt, bool, jsonb →
// JSON.parse, arrays → pgArrayParser), the snapshot tracker and publishing
// to subscribers.
//
// After --warmup passes (for the JIT), it does --count runs of as many
// passes as fit in --time seconds (at least one), and prints one JSON line
// per run on stdout: {"run", "passes", "seconds", "rows_per_sec",
// "mb_per_sec", "bytes"}.

import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { parseArgs } from 'node:util'

const { values: args } = parseArgs({
  options: {
    client: { type: 'string' },
    body: { type: 'string' },
    schema: { type: 'string' },
    rows: { type: 'string' },
    count: { type: 'string', default: '5' },
    time: { type: 'string', default: '1' },
    warmup: { type: 'string', default: '2' },
  },
  strict: true,
})
for (const name of ['client', 'body', 'schema', 'rows']) {
  if (!args[name]) {
    process.stderr.write(`ts-decode.mjs: --${name} is required\n`)
    process.exit(2)
  }
}

// Load the client the way `import '@electric-sql/client'` does in Node:
// the "import" entry of the package's exports.
const pkg = JSON.parse(readFileSync(join(args.client, 'package.json'), 'utf8'))
const entry = pkg.exports?.['.']?.import?.default ?? pkg.module ?? pkg.main
const { ShapeStream } = await import(pathToFileURL(join(args.client, entry)).href)

const body = readFileSync(args.body) // bytes, as they come off the network
const schema = readFileSync(args.schema, 'utf8').trim()
const rows = Number(args.rows)
const count = Number(args.count)
const minSeconds = Number(args.time)
const warmup = Number(args.warmup)

let fetches = 0
let pass = 0
const fetchClient = async () => {
  fetches++
  return new Response(body, {
    status: 200,
    headers: {
      'content-type': 'application/json',
      'electric-handle': '1-1',
      'electric-offset': '0_inf',
      'electric-schema': schema,
      'electric-cursor': '1',
      'electric-up-to-date': '',
    },
  })
}

async function onePass() {
  pass++
  const fetchesBefore = fetches
  const stream = new ShapeStream({
    url: 'http://mem/v1/shape',
    // A distinct param per pass: the client keeps some state per shape URL
    // (the up-to-date tracker); no pass must find another's.
    params: { table: 'items', pass: String(pass) },
    subscribe: false,
    fetchClient,
  })
  let n = 0
  await new Promise((resolve, reject) => {
    stream.subscribe(
      (messages) => {
        for (const m of messages) {
          if (m.headers.operation) n++
          else if (m.headers.control === 'up-to-date') resolve()
        }
      },
      reject
    )
  })
  stream.unsubscribeAll()
  if (n !== rows) throw new Error(`pass ${pass}: ${n} change messages, want ${rows}`)
  if (fetches - fetchesBefore !== 1) {
    throw new Error(`pass ${pass}: ${fetches - fetchesBefore} requests, want 1`)
  }
}

for (let i = 0; i < warmup; i++) await onePass()
for (let run = 1; run <= count; run++) {
  let passes = 0
  const t0 = performance.now()
  let seconds = 0
  do {
    await onePass()
    passes++
    seconds = (performance.now() - t0) / 1000
  } while (seconds < minSeconds)
  console.log(
    JSON.stringify({
      run,
      passes,
      seconds,
      rows_per_sec: (rows * passes) / seconds,
      mb_per_sec: (body.length * passes) / seconds / 1e6,
      bytes: body.length,
    })
  )
}

// The client's up-to-date tracker leaves a timer behind (it saves at most
// once a minute), which would keep Node running for up to 60 s more.
process.stdout.write('', () => process.exit(0))
