-- Schema version 3: the hand-over fence. Each claim of a user by a front end raises its generation; soft-state
-- writes carry the generation their writer holds and are refused once a newer claim exists, so an old owner's
-- late write-behind cannot overwrite what the new owner loaded or wrote.
CREATE TABLE user_owner (
    aor    TEXT NOT NULL PRIMARY KEY,
    member TEXT NOT NULL,
    gen    BIGINT NOT NULL
)
