-- Directus stand-in schema, for dev and tests only.
--
-- In production these tables belong to Directus: organizations, events,
-- organization_users and event_devices are Directus collections, and the
-- directus_* tables are Directus's own. This file creates the same shapes
-- (as Directus 11/12 creates them, docs/directus.md: uuid primary
-- keys with no database default, varchar(255) strings, timestamptz, foreign
-- keys named <table>_<column>_foreign) where they do not exist yet, so that
-- dev and tests run without a Directus. Every statement is idempotent; on a
-- database where Directus already created the tables it changes nothing.

CREATE TABLE IF NOT EXISTS directus_roles (
    id uuid PRIMARY KEY,
    name varchar(100) NOT NULL,
    parent uuid NULL
);

CREATE TABLE IF NOT EXISTS directus_users (
    id uuid PRIMARY KEY,
    first_name varchar(50) NULL,
    last_name varchar(50) NULL,
    email varchar(128) NULL UNIQUE,
    password varchar(255) NULL,
    status varchar(16) NOT NULL DEFAULT 'active',
    role uuid NULL REFERENCES directus_roles (id) ON DELETE SET NULL
);

CREATE TABLE IF NOT EXISTS directus_policies (
    id uuid PRIMARY KEY,
    name varchar(100) NOT NULL,
    admin_access boolean NOT NULL DEFAULT false,
    app_access boolean NOT NULL DEFAULT false,
    enforce_tfa boolean NOT NULL DEFAULT false
);

CREATE TABLE IF NOT EXISTS directus_access (
    id uuid PRIMARY KEY,
    role uuid NULL REFERENCES directus_roles (id) ON DELETE CASCADE,
    "user" uuid NULL REFERENCES directus_users (id) ON DELETE CASCADE,
    policy uuid NOT NULL REFERENCES directus_policies (id) ON DELETE CASCADE,
    sort integer NULL
);

CREATE TABLE IF NOT EXISTS organizations (
    id uuid NOT NULL,
    name varchar(255) NOT NULL,
    CONSTRAINT organizations_pkey PRIMARY KEY (id)
);

CREATE TABLE IF NOT EXISTS events (
    id uuid NOT NULL,
    organization_id uuid NOT NULL,
    name varchar(255) NULL,
    CONSTRAINT events_pkey PRIMARY KEY (id),
    CONSTRAINT events_organization_id_foreign FOREIGN KEY (organization_id)
        REFERENCES organizations (id) ON DELETE CASCADE
);

CREATE TABLE IF NOT EXISTS organization_users (
    id uuid NOT NULL,
    organization_id uuid NOT NULL,
    user_id uuid NOT NULL,
    CONSTRAINT organization_users_pkey PRIMARY KEY (id),
    CONSTRAINT organization_users_organization_id_foreign FOREIGN KEY (organization_id)
        REFERENCES organizations (id) ON DELETE CASCADE,
    CONSTRAINT organization_users_user_id_foreign FOREIGN KEY (user_id)
        REFERENCES directus_users (id) ON DELETE CASCADE
);

CREATE TABLE IF NOT EXISTS event_devices (
    id uuid NOT NULL,
    event_id uuid NOT NULL,
    device_id varchar(255) NOT NULL,
    assigned_from timestamp with time zone NULL,
    assigned_until timestamp with time zone NULL,
    CONSTRAINT event_devices_pkey PRIMARY KEY (id),
    CONSTRAINT event_devices_event_id_foreign FOREIGN KEY (event_id)
        REFERENCES events (id) ON DELETE CASCADE
);

-- Not created by Directus: the index the bridge's routing query wants. On a
-- real Directus database, add it once by hand (it is harmless to Directus).
CREATE INDEX IF NOT EXISTS event_devices_device_id_index ON event_devices (device_id);
