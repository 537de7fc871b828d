-- City map: the audit log of every write made through the map's API, and the operator's
-- decision on recommended signal plans.

CREATE TABLE IF NOT EXISTS audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,               -- the token holder's name
    role        text NOT NULL CHECK (role IN ('operator', 'utility', 'viewer')),
    action      text NOT NULL,               -- e.g. violation.confirm, plan.approve, alert.ack
    subject     text NOT NULL,               -- what was acted on, e.g. the violation id
    details     jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS audit_log_at_idx ON audit_log (at DESC);
CREATE INDEX IF NOT EXISTS audit_log_subject_idx ON audit_log (subject, at DESC);

-- Review of recommended plans (kind 'recommended'); NULL for plans in force (kind 'current').
ALTER TABLE signal_plans ADD COLUMN IF NOT EXISTS review_state text
    CHECK (review_state IN ('approved', 'rejected'));
ALTER TABLE signal_plans ADD COLUMN IF NOT EXISTS reviewed_at timestamptz;
ALTER TABLE signal_plans ADD COLUMN IF NOT EXISTS reviewed_by text;

CREATE INDEX IF NOT EXISTS violations_review_state_time_idx
    ON violations (review_state, occurred_at DESC);
CREATE INDEX IF NOT EXISTS events_time_idx ON events (raised_at DESC);
