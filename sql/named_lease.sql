-- Named leases: distributed locks for code outside jobs ("only one request
-- builds the queue of build 42", "one cron runner at a time"), held in
-- Postgres with an expiry and a fencing token. Every acquisition draws its
-- token from one sequence, so a name's tokens strictly increase across all
-- holders; writes made under a lease can be fenced with
-- commitq.assert_fencing_token, so a holder that stalled past its expiry
-- cannot write after another took over.
--
-- Errors: CQ001 bad argument, CQ102 stale token (the lease moved on or was
-- released), CQ103 expired token (nobody took over yet, but the holder may
-- no longer act on it).

CREATE SEQUENCE commitq.lease_token_seq AS bigint;

CREATE TABLE commitq.named_leases (
    name        text PRIMARY KEY,
    owner       text NOT NULL,
    token       bigint NOT NULL,
    expires_at  timestamptz NOT NULL
);

SELECT pg_catalog.pg_extension_config_dump('commitq.named_leases', '');
SELECT pg_catalog.pg_extension_config_dump('commitq.lease_token_seq', '');

-- commitq._lease_args_problem(name, owner, ttl), what is wrong with a
-- lease's arguments or NULL, is in Rust (extension/src/checks.rs): as a SQL
-- function with a pinned search_path it was planned again in every
-- transaction, on every acquire and renew.

-- Take the lease `name` for `owner` until now + ttl if nobody holds it (or
-- the holder's lease expired). Returns the new fencing token, or NULL when
-- it is held. Never waits for the holder; call it in its own transaction.
CREATE FUNCTION commitq.try_acquire_lease(name text, owner text, ttl interval)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_token bigint;
BEGIN
    PERFORM commitq._check(commitq._lease_args_problem(try_acquire_lease.name, try_acquire_lease.owner,
                                                       try_acquire_lease.ttl));
    -- A holder renewing or releasing right now keeps the row locked: that
    -- lease is taken, whatever its expiry says.
    PERFORM 1 FROM commitq.named_leases l WHERE l.name = try_acquire_lease.name FOR UPDATE SKIP LOCKED;
    IF NOT FOUND AND EXISTS (SELECT 1 FROM commitq.named_leases l WHERE l.name = try_acquire_lease.name) THEN
        RETURN NULL;
    END IF;
    INSERT INTO commitq.named_leases AS l (name, owner, token, expires_at)
    VALUES (try_acquire_lease.name, try_acquire_lease.owner, nextval('commitq.lease_token_seq'),
            clock_timestamp() + try_acquire_lease.ttl)
    ON CONFLICT ON CONSTRAINT named_leases_pkey DO UPDATE
       SET owner = excluded.owner, token = excluded.token, expires_at = excluded.expires_at
     WHERE l.expires_at <= clock_timestamp()
    RETURNING l.token INTO v_token;
    RETURN v_token;
END
$$;

-- The same, waiting up to `wait` for the lease to come free (polling with
-- growing pauses). It keeps the caller's transaction open while it waits;
-- clients that can should loop on try_acquire_lease instead, as the Rust
-- client does.
CREATE FUNCTION commitq.acquire_lease(name text, owner text, ttl interval, wait interval)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_token bigint;
    v_deadline timestamptz := clock_timestamp() + coalesce(acquire_lease.wait, interval '0');
    v_pause float8 := 0.005;
BEGIN
    LOOP
        v_token := commitq.try_acquire_lease(acquire_lease.name, acquire_lease.owner, acquire_lease.ttl);
        IF v_token IS NOT NULL OR clock_timestamp() >= v_deadline THEN
            RETURN v_token;
        END IF;
        PERFORM pg_sleep(LEAST(v_pause, extract(epoch FROM v_deadline - clock_timestamp())::float8));
        v_pause := LEAST(v_pause * 2, 0.25);
    END LOOP;
END
$$;

-- Lock the lease row of (name, token) if the token is current and live;
-- raise CQ102 or CQ103 otherwise.
CREATE FUNCTION commitq._locked_named_lease(p_name text, p_token bigint)
RETURNS commitq.named_leases
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    l commitq.named_leases;
BEGIN
    PERFORM commitq._check(CASE WHEN p_name IS NULL OR p_token IS NULL
                                THEN 'name and token must not be NULL' END);
    SELECT * INTO l FROM commitq.named_leases x WHERE x.name = p_name FOR UPDATE;
    IF NOT FOUND OR l.token <> p_token THEN
        RAISE EXCEPTION 'commitq: stale lease: token % no longer holds lease %', p_token, p_name
            USING ERRCODE = 'CQ102';
    END IF;
    IF l.expires_at <= clock_timestamp() THEN
        RAISE EXCEPTION 'commitq: lease expired: token % of lease % ran out', p_token, p_name
            USING ERRCODE = 'CQ103', DETAIL = format('The lease ran out at %s.', l.expires_at);
    END IF;
    RETURN l;
END
$$;

-- Extend the lease held with `token` to now + ttl. Returns the new expiry.
CREATE FUNCTION commitq.renew_lease(name text, token bigint, ttl interval)
RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    l commitq.named_leases;
BEGIN
    -- Arguments first (the owner is the holder's, already valid).
    PERFORM commitq._check(commitq._lease_args_problem(renew_lease.name, '-', renew_lease.ttl));
    l := commitq._locked_named_lease(renew_lease.name, renew_lease.token);
    UPDATE commitq.named_leases x SET expires_at = clock_timestamp() + renew_lease.ttl
     WHERE x.name = l.name
    RETURNING x.expires_at INTO l.expires_at;
    RETURN l.expires_at;
END
$$;

-- Give the lease up. A token whose lease expired may still release it, as
-- long as nobody took over; a stale token raises CQ102.
CREATE FUNCTION commitq.release_lease(name text, token bigint)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM commitq._check(CASE WHEN release_lease.name IS NULL OR release_lease.token IS NULL
                                THEN 'name and token must not be NULL' END);
    DELETE FROM commitq.named_leases x WHERE x.name = release_lease.name AND x.token = release_lease.token;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'commitq: stale lease: token % no longer holds lease %', release_lease.token, release_lease.name
            USING ERRCODE = 'CQ102';
    END IF;
END
$$;

-- Raise CQ102/CQ103 unless `token` currently holds lease `name`, and keep
-- the lease from changing hands until the caller's transaction ends: put it
-- before writes made under the lease to fence them.
CREATE FUNCTION commitq.assert_fencing_token(name text, token bigint)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM commitq._locked_named_lease(assert_fencing_token.name, assert_fencing_token.token);
END
$$;
