"""The consumer's PostgreSQL tables, created by the consumer itself (idempotent DDL).

Several consumers may start at once against one database (members of a shared
subscription): the DDL runs under a transaction-scoped advisory lock, so exactly one
creates what is missing and the others find it there.
"""

from __future__ import annotations

__all__ = ["DDL", "SCHEMA_LOCK", "TABLES"]

SCHEMA_LOCK = 0x6564_6765_636C
"""Advisory lock key held while the DDL runs ("edgecl")."""

TABLES = (
    "messages",
    "streams",
    "gaps",
    "evictions",
    "conflicts",
    "rejects",
    "gateways",
    "status_log",
    "ignored",
)

DDL = """
-- Every telemetry message, once: a re-sent copy (same device, topic, seq) is not stored again.
CREATE TABLE IF NOT EXISTS messages (
    device      text NOT NULL,
    topic       text NOT NULL,
    seq         bigint NOT NULL,
    tenant      text NOT NULL,
    site        text NOT NULL,
    kind        text NOT NULL,
    msg_id      text NOT NULL,
    ts          double precision NOT NULL,
    received_at timestamptz NOT NULL,
    retained    boolean NOT NULL DEFAULT false,
    payload     jsonb NOT NULL,
    PRIMARY KEY (device, topic, seq)
);
CREATE INDEX IF NOT EXISTS messages_kind_received ON messages (kind, received_at);

-- Per (device, topic): the highest seq stored (gap detection) and what arrived.
-- `probed_at`: when the consumer last asked above `last_seq` after the stream went quiet
-- (a loss at the very end of a burst has no later seq to reveal it).
CREATE TABLE IF NOT EXISTS streams (
    device      text NOT NULL,
    topic       text NOT NULL,
    tenant      text NOT NULL,
    site        text NOT NULL,
    kind        text NOT NULL,
    first_seq   bigint,
    last_seq    bigint,
    received    bigint NOT NULL DEFAULT 0,
    duplicates  bigint NOT NULL DEFAULT 0,
    conflicts   bigint NOT NULL DEFAULT 0,
    reordered   bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    probed_at   timestamptz,
    PRIMARY KEY (device, topic)
);
ALTER TABLE streams ADD COLUMN IF NOT EXISTS probed_at timestamptz;

-- Seq ranges found missing. `missing` counts seqs neither stored nor evicted, `evicted`
-- those the gateway dropped by policy. open: within the grace period or never asked;
-- requested: `sync.resend` sent; repaired: every seq arrived; evicted: nothing missing but
-- what the gateway evicted.
CREATE TABLE IF NOT EXISTS gaps (
    id          bigserial PRIMARY KEY,
    device      text NOT NULL,
    topic       text NOT NULL,
    from_seq    bigint NOT NULL,
    to_seq      bigint NOT NULL,
    state       text NOT NULL DEFAULT 'open'
                CHECK (state IN ('open', 'requested', 'repaired', 'evicted')),
    missing     bigint NOT NULL,
    evicted     bigint NOT NULL DEFAULT 0,
    opened_at   timestamptz NOT NULL,
    next_ask_at timestamptz NOT NULL,
    asked_at    timestamptz,
    attempts    integer NOT NULL DEFAULT 0,
    closed_at   timestamptz,
    last_reply  jsonb,
    last_error  text,
    CHECK (from_seq <= to_seq)
);
CREATE INDEX IF NOT EXISTS gaps_stream ON gaps (device, topic, from_seq);
CREATE INDEX IF NOT EXISTS gaps_due ON gaps (next_ask_at) WHERE state IN ('open', 'requested');

-- Ranges the gateway dropped by policy: announced (`outbox.evicted` event) or answered
-- (`sync.resend` reply). Not losses of the pipeline.
CREATE TABLE IF NOT EXISTS evictions (
    device      text NOT NULL,
    topic       text NOT NULL,
    from_seq    bigint NOT NULL,
    to_seq      bigint NOT NULL,
    source      text NOT NULL CHECK (source IN ('event', 'resend')),
    reason      text,
    recorded_at timestamptz NOT NULL,
    PRIMARY KEY (device, topic, from_seq, to_seq, source)
);

-- A seq that came again with a different msg_id (a gateway whose store was reset).
CREATE TABLE IF NOT EXISTS conflicts (
    id            bigserial PRIMARY KEY,
    device        text NOT NULL,
    topic         text NOT NULL,
    seq           bigint NOT NULL,
    msg_id        text NOT NULL,
    stored_msg_id text NOT NULL,
    received_at   timestamptz NOT NULL,
    payload       jsonb NOT NULL
);

-- Payloads that break the contract, with the reason.
CREATE TABLE IF NOT EXISTS rejects (
    id          bigserial PRIMARY KEY,
    topic       text NOT NULL,
    received_at timestamptz NOT NULL,
    reason      text NOT NULL,
    payload     bytea NOT NULL
);

-- One row per gateway: online from its birth / last will (`status`, ordered by its seq,
-- which numbers connections), last heartbeat, last message of any kind.
CREATE TABLE IF NOT EXISTS gateways (
    tenant             text NOT NULL,
    site               text NOT NULL,
    device             text NOT NULL,
    online             boolean,
    status_seq         bigint,
    status_ts          double precision,
    status_at          timestamptz,
    last_heartbeat_at  timestamptz,
    last_heartbeat_seq bigint,
    last_seen_at       timestamptz NOT NULL,
    PRIMARY KEY (tenant, site, device)
);

-- Every `status` message once (online and offline of one connection share a seq).
CREATE TABLE IF NOT EXISTS status_log (
    topic       text NOT NULL,
    msg_id      text NOT NULL,
    device      text NOT NULL,
    seq         bigint NOT NULL,
    state       text NOT NULL,
    ts          double precision NOT NULL,
    received_at timestamptz NOT NULL,
    retained    boolean NOT NULL,
    PRIMARY KEY (topic, msg_id)
);

-- Messages under the subscription that are not telemetry (commands, replies), by topic.
CREATE TABLE IF NOT EXISTS ignored (
    topic text PRIMARY KEY,
    count bigint NOT NULL
);
"""
