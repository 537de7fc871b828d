-- The road network the map draws as its base layer (no external tiles): segments exported
-- from the simulator's SUMO network, or a city's own GeoJSON, one row per segment.

CREATE TABLE IF NOT EXISTS road_segments (
    id               text PRIMARY KEY,
    intersection_id  text REFERENCES intersections (id) ON DELETE CASCADE,
    name             text NOT NULL DEFAULT '',
    geometry         jsonb NOT NULL CHECK (geometry->>'type' IN ('LineString', 'MultiLineString')),
    properties       jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS road_segments_intersection_idx ON road_segments (intersection_id);
