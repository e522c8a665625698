'use strict';
// Benchmark peer for bench/postgres.sh: what a Gorgon user would otherwise write. One Node.js
// process, Fastify + pg with a pool of 10, reading the tables Gorgon created
// (src/store/postgres/migrations/0001_schema.sql) with the statements Gorgon runs
// (src/store/postgres/items.rs, columns from rows.rs), as named prepared statements (pg prepares
// each once per connection, as Gorgon's statement cache does). JSON shaped like Gorgon's answers.
//
// env: DATABASE_URL (postgres://…/db), PORT (default 3000), HOST (default 127.0.0.1), POOL (10)

const fastify = require('fastify')({ logger: false });
const pg = require('pg');

const pool = new pg.Pool({
  connectionString: process.env.DATABASE_URL,
  max: Number(process.env.POOL || 10),
});

const COLUMNS = 'id, user_id, title, body, url, ts, lat, lon, keywords, extra';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const MAX_UUID = 'ffffffff-ffff-ffff-ffff-ffffffffffff';

// A row as Gorgon's `Item`: location as {lat, lon} or null, no `words`.
function item(r) {
  return {
    id: r.id,
    user_id: r.user_id,
    title: r.title,
    body: r.body,
    url: r.url,
    ts: r.ts,
    location: r.lat === null || r.lon === null ? null : { lat: r.lat, lon: r.lon },
    keywords: r.keywords,
    extra: r.extra,
  };
}

function badRequest(reply, field) {
  return reply.code(400).send({ error: { code: 'invalid', message: `malformed ${field}` } });
}

// GET an item by id: Gorgon's find_item.
fastify.get('/items/:id', async (req, reply) => {
  if (!UUID.test(req.params.id)) return badRequest(reply, 'id');
  const { rows } = await pool.query({
    name: 'item_by_id',
    text: `SELECT ${COLUMNS} FROM items WHERE id = $1`,
    values: [req.params.id],
  });
  if (rows.length === 0) {
    return reply.code(404).send({ error: { code: 'not_found', message: 'no such item' } });
  }
  return item(rows[0]);
});

// A user's newest items: Gorgon's list_user_items (index (user_id, id DESC)).
fastify.get('/users/:id/items', async (req, reply) => {
  if (!UUID.test(req.params.id)) return badRequest(reply, 'id');
  const limit = Number(req.query.limit ?? 10);
  const offset = Number(req.query.offset ?? 0);
  if (!Number.isInteger(limit) || limit < 1 || limit > 100) return badRequest(reply, 'limit');
  if (!Number.isInteger(offset) || offset < 0 || offset > 100000) return badRequest(reply, 'offset');
  const { rows } = await pool.query({
    name: 'user_newest',
    text: `SELECT ${COLUMNS} FROM items WHERE user_id = $1 AND id < $2
           ORDER BY id DESC LIMIT $3 OFFSET $4`,
    values: [req.params.id, MAX_UUID, limit, offset],
  });
  const items = rows.map(item);
  const page = { items, limit, offset };
  if (items.length >= limit) page.next = items[items.length - 1].id;
  return page;
});

fastify.get('/healthz', async () => ({ status: 'ok' }));

fastify.listen({ host: process.env.HOST || '127.0.0.1', port: Number(process.env.PORT || 3000) })
  .catch((e) => { console.error(e); process.exit(1); });

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => { fastify.close().then(() => pool.end()).then(() => process.exit(0)); });
}
