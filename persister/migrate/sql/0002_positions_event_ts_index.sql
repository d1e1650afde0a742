-- 0002 index for "every position of an event in a time range" (replay,
-- Directus filters by event). Convergent: IF NOT EXISTS.
CREATE INDEX IF NOT EXISTS positions_event_id_ts_idx ON positions (event_id, ts);
