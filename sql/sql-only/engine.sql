-- Without the library there is no engine: the state says so, and clients
-- call commitq.maintain() themselves (docs/managed-postgres.md).
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
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY SELECT false, 0::bigint, 0::bigint, NULL::bigint, NULL::bigint, NULL::bigint,
                        NULL::bigint, NULL::text;
END
$$;
