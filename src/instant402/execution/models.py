"""Tables of the execution domain (migration: db/migrations/versions/)."""
