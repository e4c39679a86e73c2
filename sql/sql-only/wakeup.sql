-- Without the library there is no shared memory: nothing to wake at commit
-- (NOTIFY still wakes LISTENing workers), and commitq.claim_wait polls.
CREATE FUNCTION commitq._wake_at_commit(p_queue text) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
END
$$;

CREATE FUNCTION commitq.wait_supported() RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN false;
END
$$;
