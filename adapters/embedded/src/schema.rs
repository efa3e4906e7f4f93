//! The tables of the embedded data directory's SQLite file: objects' metadata, queue messages,
//! jobs and their history, the event log, WebSocket connections and subscriptions.

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS objects (
    key TEXT PRIMARY KEY, size INTEGER NOT NULL, etag TEXT NOT NULL,
    metadata TEXT NOT NULL, last_modified INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL, message_id TEXT NOT NULL,
    body TEXT NOT NULL, sent_at INTEGER NOT NULL, visible_at INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0, receipt TEXT, dead_letter_reason TEXT);
CREATE INDEX IF NOT EXISTS messages_by_queue ON messages(queue, visible_at, id);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, created_at INTEGER NOT NULL,
    rank INTEGER NOT NULL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_by_user ON jobs(user_id, created_at);
CREATE TABLE IF NOT EXISTS job_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, status TEXT NOT NULL, at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS job_history_by_job ON job_history(job_id, seq);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, job_id TEXT NOT NULL,
    detail_type TEXT NOT NULL, body TEXT NOT NULL, published_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_job ON events(job_id, seq);
CREATE TABLE IF NOT EXISTS connections (
    connection_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, connected_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS subscriptions (
    connection_id TEXT NOT NULL, job_id TEXT NOT NULL, delivered_rank INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (connection_id, job_id));
CREATE INDEX IF NOT EXISTS subscriptions_by_job ON subscriptions(job_id);
";
