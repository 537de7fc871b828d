-- Reference data: the city's places and devices. Small, edited by operators/simulators.
-- Hypertables do not reference these with foreign keys on purpose: a reading from a meter
-- that is not registered yet must not make a whole ingest batch fail.

CREATE TABLE IF NOT EXISTS districts (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    boundary    jsonb NOT NULL,              -- GeoJSON geometry (Polygon / MultiPolygon), WGS84
    properties  jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT districts_boundary_is_geojson
        CHECK (boundary ? 'type' AND boundary ? 'coordinates')
);

CREATE TABLE IF NOT EXISTS feeders (
    id           text PRIMARY KEY,
    district_id  text NOT NULL REFERENCES districts (id),
    name         text,
    rated_kw     double precision NOT NULL CHECK (rated_kw > 0),
    lon          double precision CHECK (lon BETWEEN -180 AND 180),
    lat          double precision CHECK (lat BETWEEN -90 AND 90),
    properties   jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS feeders_district_idx ON feeders (district_id);

CREATE TABLE IF NOT EXISTS meters (
    id            text PRIMARY KEY,
    feeder_id     text NOT NULL REFERENCES feeders (id),
    archetype     text NOT NULL,             -- e.g. residential, commercial, industrial
    has_solar     boolean NOT NULL DEFAULT false,
    lon           double precision CHECK (lon BETWEEN -180 AND 180),
    lat           double precision CHECK (lat BETWEEN -90 AND 90),
    installed_at  timestamptz,
    properties    jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS meters_feeder_idx ON meters (feeder_id);

CREATE TABLE IF NOT EXISTS intersections (
    id           text PRIMARY KEY,
    name         text NOT NULL,
    lon          double precision NOT NULL CHECK (lon BETWEEN -180 AND 180),
    lat          double precision NOT NULL CHECK (lat BETWEEN -90 AND 90),
    district_id  text REFERENCES districts (id),
    properties   jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS cameras (
    id                   text PRIMARY KEY,
    intersection_id      text NOT NULL REFERENCES intersections (id),
    -- where the camera is and where it looks
    lon                  double precision CHECK (lon BETWEEN -180 AND 180),
    lat                  double precision CHECK (lat BETWEEN -90 AND 90),
    heading_deg          double precision CHECK (heading_deg >= 0 AND heading_deg < 360),
    mount_height_m       double precision CHECK (mount_height_m >= 0),
    width                integer CHECK (width > 0),
    height               integer CHECK (height > 0),
    -- stop lines, lanes, zones, image-to-ground homography, speed limits (JSON document)
    calibration          jsonb NOT NULL DEFAULT '{}'::jsonb,
    calibration_version  integer NOT NULL DEFAULT 0 CHECK (calibration_version >= 0),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS cameras_intersection_idx ON cameras (intersection_id);
