-- commitq's objects as a catalog query sees them, with the owner's name
-- replaced by OWNER: run in both installs by tests/sql_only/run.sh, which
-- compares the two. Left out, as the differences this mode is made of: the
-- language and SET clause of the functions that are C in the extension
-- (their PL/pgSQL equivalents pin search_path), helpers named _sql_only_*,
-- and commitq.config.max_args_bytes (the server setting's stand-in).
\pset format unaligned
\pset tuples_only on
CREATE FUNCTION pg_temp.acl(a aclitem[], owner oid) RETURNS text LANGUAGE sql AS $$
    SELECT coalesce(string_agg(replace(x::text, pg_get_userbyid(owner), 'OWNER'), ',' ORDER BY replace(x::text, pg_get_userbyid(owner), 'OWNER')), '')
      FROM unnest(a) x
$$;

SELECT 'function ' || p.oid::regprocedure || ' returns ' || pg_get_function_result(p.oid)
       || ' args ' || pg_get_function_arguments(p.oid)
       || ' ' || p.provolatile::text || p.proparallel::text || ' secdef=' || p.prosecdef || ' strict=' || p.proisstrict
       || CASE WHEN l.lanname = 'c' OR p.proname IN ('_check', '_queue_problem', '_job_problem',
                   '_worker_lease_problem', '_batch_problem', '_lease_args_problem', '_max_args_bytes',
                   '_cron_problem', '_cron_due', '_cron_next',
                   '_engine_status', '_wake_at_commit', 'wait_supported', 'claim_wait')
                   OR (p.proname = 'enqueue' AND p.pronargs = 11)
               THEN '' ELSE ' ' || l.lanname || ' ' || coalesce(array_to_string(p.proconfig, ','), '') END
       || ' acl ' || pg_temp.acl(p.proacl, p.proowner)
  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
 WHERE p.pronamespace = 'commitq'::regnamespace AND p.proname NOT LIKE '\_sql\_only\_%'
UNION ALL
SELECT 'relation ' || c.relname || ' ' || c.relkind::text || c.relpersistence::text
       || ' options ' || coalesce(array_to_string(c.reloptions, ','), '') || ' acl ' || pg_temp.acl(c.relacl, c.relowner)
  FROM pg_class c WHERE c.relnamespace = 'commitq'::regnamespace AND c.relkind <> 'i'
UNION ALL
SELECT 'index ' || pg_get_indexdef(i.indexrelid)
  FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace = 'commitq'::regnamespace
UNION ALL
SELECT 'column ' || a.attrelid::regclass || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || ' notnull=' || a.attnotnull || ' default ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE c.relnamespace = 'commitq'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
   AND NOT (c.relname = 'config' AND a.attname = 'max_args_bytes')
UNION ALL
SELECT 'constraint ' || conrelid::regclass || ' ' || pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace = 'commitq'::regnamespace AND conname <> 'config_max_args_bytes_check'
UNION ALL
SELECT 'type ' || t.typname || ' ' || t.typtype::text || ' acl ' || pg_temp.acl(t.typacl, t.typowner)
  FROM pg_type t WHERE t.typnamespace = 'commitq'::regnamespace
UNION ALL
SELECT 'schema acl ' || pg_temp.acl(n.nspacl, n.nspowner) FROM pg_namespace n WHERE n.nspname = 'commitq'
UNION ALL
SELECT 'trigger ' || pg_get_triggerdef(t.oid)
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid WHERE c.relnamespace = 'commitq'::regnamespace AND NOT t.tgisinternal
ORDER BY 1;
