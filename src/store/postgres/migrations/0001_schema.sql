-- Gorgon's schema, version 1. Ids are the callers' UUIDv7 (time-ordered): "newest first" is
-- `id DESC`, and inserts append to the end of every id index.

CREATE TABLE users (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    email text NOT NULL,
    grp bigint NOT NULL,
    admin boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL,
    extra json NOT NULL,
    password_hash text NOT NULL,
    CONSTRAINT users_email UNIQUE (email)
);

-- One account per look of an address (`Email::look_alike_key`): `alıce@` cannot join `alice@`.
CREATE TABLE email_keys (
    key text PRIMARY KEY,
    user_id uuid NOT NULL
);
CREATE INDEX email_keys_user ON email_keys (user_id);

CREATE TABLE tokens (
    hash bytea PRIMARY KEY,
    user_id uuid NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX tokens_user ON tokens (user_id);

-- `words`: the folded words of title, body and keywords (what search finds an item by). The
-- secondary indexes (a user's newest items, search) are created with the other indexes that a
-- bulk load sets aside, see `ITEM_INDEXES` in migrations.rs.
CREATE TABLE items (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL,
    title text NOT NULL,
    body text NOT NULL,
    url text,
    ts timestamptz NOT NULL,
    lat double precision,
    lon double precision,
    keywords text[] NOT NULL,
    extra json NOT NULL,
    words text[] NOT NULL
);
-- Search's plan depends on how common its words are (see search.rs): a finer sample of the words
-- (the 10,000 most common, not 1,000) lets the planner tell a rare word from a common one, so a
-- rare or missing word is read through the GIN index instead of walking every item.
ALTER TABLE items ALTER COLUMN words SET STATISTICS 1000;

-- run_after is when the job is next due: the next attempt of a queued or failed job, the end of a
-- running job's lease (then it is claimed again), the finish time of a done or dead one (purge).
-- One index over (state, run_after) thus serves claims, lease expiry and purges.
CREATE TABLE jobs (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL,
    kind text NOT NULL,
    state text NOT NULL,
    payload json NOT NULL,
    result json,
    error text,
    attempts integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    run_after timestamptz NOT NULL,
    idempotency_key text
);
CREATE INDEX jobs_due ON jobs (state, run_after);
CREATE INDEX jobs_state_newest ON jobs (state, id DESC);
CREATE INDEX jobs_user_state ON jobs (user_id, state);
-- One job per user and key (rows without a key never clash: NULLs are distinct).
CREATE UNIQUE INDEX jobs_idempotency ON jobs (user_id, idempotency_key);

-- Ingest signatures already used, each until its window ends (replays are refused);
-- `first_item` tells a redelivered batch (the same items) from a replayed request (new ids).
CREATE TABLE ingest_seen (
    key bytea PRIMARY KEY,
    expires_at timestamptz NOT NULL,
    first_item uuid
);
CREATE INDEX ingest_seen_expiry ON ingest_seen (expires_at);
