"""Tables of the catalog domain (migration: db/migrations/versions/)."""
