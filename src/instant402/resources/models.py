"""Tables of the resources domain (migration: db/migrations/versions/)."""
