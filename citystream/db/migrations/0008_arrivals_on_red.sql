-- Arrivals on red per lane and window (a signal-coordination measure for operators):
-- vehicles reaching the lane's arrival line, and how many of them met a red signal.

ALTER TABLE traffic_counts ADD COLUMN IF NOT EXISTS arrivals integer NOT NULL DEFAULT 0
    CHECK (arrivals >= 0);
ALTER TABLE traffic_counts ADD COLUMN IF NOT EXISTS arrivals_on_red integer NOT NULL DEFAULT 0
    CHECK (arrivals_on_red >= 0 AND arrivals_on_red <= arrivals);
