-- schema version 6: the hand-over fence, and what a member has in flight (drain waits for 0).
-- The fence: each claim of a user by a front end raises its generation; soft-state
-- writes carry the generation their writer holds and are refused once a newer claim exists, so an old owner's
-- late write-behind cannot overwrite what the new owner loaded or wrote.
CREATE TABLE user_owner (
    aor    TEXT NOT NULL PRIMARY KEY,
    member TEXT NOT NULL,
    gen    BIGINT NOT NULL
);
ALTER TABLE member ADD COLUMN in_flight BIGINT NOT NULL DEFAULT 0
