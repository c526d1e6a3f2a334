import { ShapeStream } from '@electric-sql/client'
const rows = 100000
const parts = []
for (let i = 0; i < rows; i++) {
  parts.push(`{"key":"\\"public\\".\\"items\\"/\\"${i}\\"","value":{"id":"${i}","title":"item number ${i}","n":"${i%1000}","flag":"${i%2===0}","tags":"{a,b}","doc":null},"headers":{"operation":"insert","relation":["public","items"]}}`)
}
const body = '[' + parts.join(',\n') + `,{"headers":{"control":"snapshot-end","xmin":"1","xmax":"1","xip_list":[]}},{"headers":{"control":"up-to-date","global_last_seen_lsn":"1"}}]`
const schema = `{"id":{"type":"int8","pk_index":0,"not_null":true},"title":{"type":"text"},"n":{"type":"int4"},"flag":{"type":"bool"},"tags":{"type":"text","dims":1},"doc":{"type":"jsonb"}}`
const raw = process.argv[2] === 'raw'
let k = 0
const fetchClient = async (url) => new Response(body, { status: 200, headers: {
  'electric-handle': '1-1', 'electric-offset': '0_inf', 'electric-schema': schema, 'electric-cursor': String(++k),
  'electric-up-to-date': '', 'content-type': 'application/json' } })
async function once() {
  const opts = { url: 'http://mem/v1/shape', params: { table: 'items', run: String(k) }, subscribe: false, fetchClient }
  if (raw) opts.parser = { int8: (v) => v, int4: (v) => v, bool: (v) => v, jsonb: (v) => v }
  const s = new ShapeStream(opts)
  let n = 0
  await new Promise((resolve, reject) => {
    s.subscribe((msgs) => { if (process.env.DBG) console.log("batch", msgs.length); for (const m of msgs) { if (m.headers.operation) n++; if (m.headers.control === 'up-to-date') resolve() } }, reject)
  })
  if (n !== rows) throw new Error('rows ' + n)
}
for (let i = 0; i < 2; i++) await once()
const iters = 5
const t0 = performance.now()
for (let i = 0; i < iters; i++) await once()
const sec = (performance.now() - t0) / 1000
console.log(`TS client (${raw ? 'values as strings' : 'default parser'}): ${(rows*iters/sec).toFixed(0)} rows/s, ${(body.length*iters/sec/1e6).toFixed(1)} MB/s`)
