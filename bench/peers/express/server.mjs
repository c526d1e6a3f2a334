#!/usr/bin/env node
// server.mjs: an Electric auth proxy in Express, the peer that
// bench/proxy.sh compares shapeseal's proxy with. It is written as
// Electric's docs show a proxy ("Auth" and "Security" guides): the client
// names a shape by route, the proxy checks the Authorization header,
// forwards only the protocol's query parameters
// (ELECTRIC_PROTOCOL_QUERY_PARAMS of @electric-sql/client 1.5.26, copied
// here to keep the dependency list to express), adds table and secret
// server-side, and streams the upstream body back with its headers
// (less content-encoding and content-length, which fetch has undone).
//
// For a like-for-like comparison it verifies an HS256 JWT with node:crypto
// (shapeseal verifies one on every request too). Environment:
//
//	ELECTRIC_URL     upstream base URL (required)
//	ELECTRIC_SECRET  Electric's API secret
//	JWT_SECRET       the HS256 secret
//	SHAPES           JSON object: shape name → table, e.g. {"items":"items"}
//	LISTEN           host:port, default 127.0.0.1:0
//	BENCH_MEM=1      also serve GET /__bench/mem (process.memoryUsage())
//
// It prints one line `express proxy ready {"proxy_url":…}` when listening.

import express from 'express'
import { createHmac, timingSafeEqual } from 'node:crypto'
import { Readable } from 'node:stream'

const ELECTRIC_PROTOCOL_QUERY_PARAMS = [
  'live', 'live_sse', 'experimental_live_sse', 'handle', 'offset', 'cursor',
  'expired_handle', 'log', 'subset__where', 'subset__limit', 'subset__offset',
  'subset__order_by', 'subset__params', 'subset__where_expr', 'subset__order_by_expr',
  'cache-buster',
]

const ELECTRIC_URL = process.env.ELECTRIC_URL
const ELECTRIC_SECRET = process.env.ELECTRIC_SECRET ?? ''
const JWT_SECRET = process.env.JWT_SECRET ?? ''
const SHAPES = JSON.parse(process.env.SHAPES ?? '{}')
if (!ELECTRIC_URL) {
  console.error('server.mjs: ELECTRIC_URL is required')
  process.exit(2)
}

// isAuthorized verifies "Authorization: Bearer <HS256 JWS>" and its exp.
function isAuthorized(req) {
  const m = /^Bearer ([\w-]+)\.([\w-]+)\.([\w-]+)$/.exec(req.get('authorization') ?? '')
  if (!m) return false
  try {
    const header = JSON.parse(Buffer.from(m[1], 'base64url'))
    if (header.alg !== 'HS256') return false
    const want = createHmac('sha256', JWT_SECRET).update(`${m[1]}.${m[2]}`).digest()
    const got = Buffer.from(m[3], 'base64url')
    if (got.length !== want.length || !timingSafeEqual(got, want)) return false
    const claims = JSON.parse(Buffer.from(m[2], 'base64url'))
    return typeof claims.exp === 'number' && claims.exp > Date.now() / 1000
  } catch {
    return false
  }
}

const app = express()
app.disable('x-powered-by')

app.get('/v1/shapes/:name', async (req, res) => {
  const table = Object.hasOwn(SHAPES, req.params.name) ? SHAPES[req.params.name] : undefined
  if (!table) return res.status(404).json({ message: 'unknown shape' })
  if (!isAuthorized(req)) return res.status(401).json({ message: 'unauthorized' })

  const url = new URL(req.originalUrl, 'http://proxy')
  const originUrl = new URL('/v1/shape', ELECTRIC_URL)
  url.searchParams.forEach((value, key) => {
    if (ELECTRIC_PROTOCOL_QUERY_PARAMS.includes(key)) originUrl.searchParams.set(key, value)
  })
  originUrl.searchParams.set('table', table)
  if (ELECTRIC_SECRET) originUrl.searchParams.set('secret', ELECTRIC_SECRET)

  const abort = new AbortController()
  res.on('close', () => abort.abort())
  let response
  try {
    response = await fetch(originUrl, { signal: abort.signal })
  } catch (e) {
    if (!res.headersSent && !abort.signal.aborted) res.status(502).json({ message: String(e) })
    return
  }
  const headers = new Headers(response.headers)
  headers.delete('content-encoding')
  headers.delete('content-length')
  res.status(response.status)
  headers.forEach((value, key) => res.setHeader(key, value))
  res.setHeader('vary', 'Authorization')
  if (!response.body) return res.end()
  Readable.fromWeb(response.body)
    .on('error', () => res.destroy())
    .pipe(res)
})

if (process.env.BENCH_MEM === '1') {
  app.get('/__bench/mem', (_req, res) => res.json({ ...process.memoryUsage(), maxRSS: process.resourceUsage().maxRSS * 1024 }))
}

const [host, port] = (process.env.LISTEN ?? '127.0.0.1:0').split(/:(?=\d+$)/)
const server = app.listen(Number(port), host, () => {
  const a = server.address()
  console.log(`express proxy ready ${JSON.stringify({ proxy_url: `http://${a.address}:${a.port}` })}`)
})
// Live polls are long: no request timeout (Node's default is 5 min).
server.requestTimeout = 0
server.headersTimeout = 10_000
process.on('SIGTERM', () => server.close(() => process.exit(0)))
process.on('SIGINT', () => server.close(() => process.exit(0)))
