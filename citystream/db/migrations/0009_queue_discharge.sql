-- Queue discharge per lane and window: the seconds the lane had green with a queue standing
-- in it, and the vehicles (of the row's class) that crossed the stop line in those seconds.
-- Their ratio is the lane's measured saturation flow, which the signal-timing advice uses.

ALTER TABLE traffic_counts ADD COLUMN IF NOT EXISTS discharged integer NOT NULL DEFAULT 0
    CHECK (discharged >= 0 AND discharged <= count);
ALTER TABLE traffic_counts ADD COLUMN IF NOT EXISTS discharge_s double precision NOT NULL
    DEFAULT 0 CHECK (discharge_s >= 0 AND discharge_s <= window_s);
