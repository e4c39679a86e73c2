-- The engine's state, for operators. With shared_preload_libraries =
-- 'pg_commitq' background workers call commitq.maintain() in every database
-- that has the extension, every commitq.engine_interval (extension/src/engine.rs,
-- docs/operations.md, Engine); without it, clients must call maintain.

-- The engine's state in this database, from the server's shared memory
-- (nothing is stored in tables: it restarts empty with the server).
-- Timestamps are PostgreSQL's microseconds since 2000-01-01; the view below
-- is the interface.
CREATE FUNCTION commitq._engine_status(
    OUT engine_loaded boolean,
    OUT ticks bigint,
    OUT errors bigint,
    OUT last_tick_us bigint,
    OUT last_duration_us bigint,
    OUT last_ok_us bigint,
    OUT last_error_us bigint,
    OUT last_error text)
RETURNS SETOF record
LANGUAGE c VOLATILE
AS 'MODULE_PATHNAME', 'engine_status_wrapper';

-- One row for this database: whether the engine runs at all (the library
-- preloaded and commitq.engine_enabled on here), how many ticks ran and how
-- many failed since the server started, the start and duration of the last
-- tick, the last one that succeeded, and the last error with its time. A
-- last_ok_at later than last_error_at means the engine recovered.
CREATE VIEW commitq.engine_status AS
SELECT pg_catalog.current_database() AS database,
       s.engine_loaded,
       s.engine_loaded
           AND coalesce(pg_catalog.current_setting('commitq.engine_enabled', true), 'on') = 'on' AS enabled,
       s.ticks,
       s.errors,
       timestamptz '2000-01-01 00:00:00+00' + s.last_tick_us * interval '1 microsecond' AS last_tick_at,
       s.last_duration_us * interval '1 microsecond' AS last_tick_duration,
       timestamptz '2000-01-01 00:00:00+00' + s.last_ok_us * interval '1 microsecond' AS last_ok_at,
       timestamptz '2000-01-01 00:00:00+00' + s.last_error_us * interval '1 microsecond' AS last_error_at,
       s.last_error
  FROM commitq._engine_status() s;
