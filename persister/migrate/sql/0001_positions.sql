-- 0001 positions: one row per GPS fix, keyed by (device_id, ts) so a
-- re-delivered position is absorbed by ON CONFLICT DO NOTHING and Directus
-- can expose the table as a collection.
--
-- Convergent: applied again on an existing table it only re-creates what is
-- missing (a dropped column, default, NOT NULL or the primary key). The
-- runner re-applies every file when verification finds drift.
CREATE TABLE IF NOT EXISTS positions (
    device_id   text        NOT NULL,
    ts          timestamptz NOT NULL,
    event_id    uuid,
    lat         double precision,
    lon         double precision,
    alt         real,
    speed       real,
    heading     real,
    sats        smallint,
    attrs       jsonb,
    received_at timestamptz NOT NULL DEFAULT now(),
    faulty      boolean     NOT NULL DEFAULT false,
    CONSTRAINT positions_pkey PRIMARY KEY (device_id, ts)
);

ALTER TABLE positions ADD COLUMN IF NOT EXISTS event_id uuid;
ALTER TABLE positions ADD COLUMN IF NOT EXISTS lat double precision;
ALTER TABLE positions ADD COLUMN IF NOT EXISTS lon double precision;
ALTER TABLE positions ADD COLUMN IF NOT EXISTS alt real;
ALTER TABLE positions ADD COLUMN IF NOT EXISTS speed real;
ALTER TABLE positions ADD COLUMN IF NOT EXISTS heading real;
ALTER TABLE positions ADD COLUMN IF NOT EXISTS sats smallint;
ALTER TABLE positions ADD COLUMN IF NOT EXISTS attrs jsonb;
ALTER TABLE positions ADD COLUMN IF NOT EXISTS received_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE positions ADD COLUMN IF NOT EXISTS faulty boolean NOT NULL DEFAULT false;

-- SET NOT NULL / SET DEFAULT are no-ops when already in place.
ALTER TABLE positions
    ALTER COLUMN device_id SET NOT NULL,
    ALTER COLUMN ts SET NOT NULL,
    ALTER COLUMN received_at SET DEFAULT now(),
    ALTER COLUMN received_at SET NOT NULL,
    ALTER COLUMN faulty SET DEFAULT false,
    ALTER COLUMN faulty SET NOT NULL;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = 'positions'::regclass AND indisprimary) THEN
        ALTER TABLE positions ADD CONSTRAINT positions_pkey PRIMARY KEY (device_id, ts);
    END IF;
END
$$;
