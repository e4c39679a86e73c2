-- The catalog of the pg_commitq extension in this database, one fact per
-- line as "kind identity details" (details as JSON, keys sorted), in a
-- stable order: two databases with the same objects, definitions, grants
-- and comments give the same output whatever their OIDs or history. The
-- upgrade layer diffs it between a database upgraded from a release and a
-- fresh install.
\set ON_ERROR_STOP 1
WITH ext AS (SELECT * FROM pg_extension WHERE extname = 'pg_commitq'),
ns AS (SELECT extnamespace AS oid FROM ext),
-- Every role granted something on the extension's objects, but the owner.
granted AS (
    SELECT DISTINCT (aclexplode(acl)).grantee
      FROM (SELECT nspacl FROM pg_namespace, ns WHERE pg_namespace.oid = ns.oid
            UNION ALL SELECT proacl FROM pg_proc, ns WHERE pronamespace = ns.oid
            UNION ALL SELECT relacl FROM pg_class, ns WHERE relnamespace = ns.oid
            UNION ALL SELECT typacl FROM pg_type, ns WHERE typnamespace = ns.oid) a(acl)
    EXCEPT SELECT extowner FROM ext
),
facts(kind, ident, details) AS (
    SELECT 'extension', e.extname::text,
           jsonb_build_object('version', e.extversion, 'relocatable', e.extrelocatable,
                              'schema', e.extnamespace::regnamespace::text,
                              'config_tables', (SELECT jsonb_agg(c::regclass::text ORDER BY c::regclass::text)
                                                  FROM unnest(e.extconfig) c),
                              'config_conditions', to_jsonb(e.extcondition))
      FROM ext e
    UNION ALL
    -- Which objects belong to the extension (ALTER EXTENSION ... ADD/DROP).
    SELECT 'member', pg_describe_object(d.classid, d.objid, d.objsubid), NULL
      FROM pg_depend d, ext
     WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
    UNION ALL
    SELECT 'schema', n.nspname::text,
           jsonb_build_object('owner', n.nspowner::regrole::text, 'acl', n.nspacl::text[],
                              'comment', obj_description(n.oid, 'pg_namespace'))
      FROM pg_namespace n, ns WHERE n.oid = ns.oid
    UNION ALL
    SELECT 'function', p.oid::regprocedure::text,
           jsonb_build_object('kind', p.prokind, 'arguments', pg_get_function_arguments(p.oid),
                              'result', pg_get_function_result(p.oid), 'language', l.lanname,
                              'volatility', p.provolatile, 'security_definer', p.prosecdef,
                              'strict', p.proisstrict, 'leakproof', p.proleakproof,
                              'parallel', p.proparallel, 'cost', p.procost, 'rows', p.prorows,
                              'config', p.proconfig, 'library', p.probin, 'body_md5', md5(p.prosrc),
                              'definition_md5', CASE WHEN p.prokind <> 'a' THEN md5(pg_get_functiondef(p.oid)) END,
                              'owner', p.proowner::regrole::text, 'acl', p.proacl::text[],
                              'comment', obj_description(p.oid, 'pg_proc'))
      FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang, ns WHERE p.pronamespace = ns.oid
    UNION ALL
    SELECT 'relation', c.oid::regclass::text,
           jsonb_build_object('kind', c.relkind, 'persistence', c.relpersistence,
                              'options', c.reloptions, 'row_security', c.relrowsecurity,
                              'force_row_security', c.relforcerowsecurity, 'replica_identity', c.relreplident,
                              'owner', c.relowner::regrole::text, 'acl', c.relacl::text[],
                              'comment', obj_description(c.oid, 'pg_class'),
                              'view', CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END)
      FROM pg_class c, ns WHERE c.relnamespace = ns.oid
    UNION ALL
    -- Columns: position among the live columns (a column added by ALTER
    -- TABLE lands last, so a new column goes last in CREATE TABLE too).
    SELECT 'column', a.attrelid::regclass::text || '.' || a.attname,
           jsonb_build_object('position', row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum),
                              'type', format_type(a.atttypid, a.atttypmod), 'not_null', a.attnotnull,
                              'default', pg_get_expr(ad.adbin, ad.adrelid), 'identity', a.attidentity,
                              'generated', a.attgenerated, 'collation', a.attcollation::regcollation::text,
                              'storage', a.attstorage, 'acl', a.attacl::text[],
                              'comment', col_description(a.attrelid, a.attnum))
      FROM pg_attribute a
      JOIN pg_class c ON c.oid = a.attrelid
      LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum, ns
     WHERE c.relnamespace = ns.oid AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT 'constraint', coalesce(co.conrelid::regclass::text, co.contypid::regtype::text) || ' ' || co.conname,
           jsonb_build_object('type', co.contype, 'definition', pg_get_constraintdef(co.oid),
                              'deferrable', co.condeferrable, 'deferred', co.condeferred,
                              'comment', obj_description(co.oid, 'pg_constraint'))
      FROM pg_constraint co, ns WHERE co.connamespace = ns.oid
    UNION ALL
    SELECT 'index', i.indexrelid::regclass::text,
           jsonb_build_object('definition', pg_get_indexdef(i.indexrelid), 'primary', i.indisprimary,
                              'unique', i.indisunique, 'replica_identity', i.indisreplident,
                              'clustered', i.indisclustered, 'valid', i.indisvalid)
      FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid, ns WHERE c.relnamespace = ns.oid
    UNION ALL
    SELECT 'sequence', s.seqrelid::regclass::text,
           jsonb_build_object('type', s.seqtypid::regtype::text, 'start', s.seqstart, 'increment', s.seqincrement,
                              'max', s.seqmax, 'min', s.seqmin, 'cache', s.seqcache, 'cycle', s.seqcycle,
                              'owned_by', (SELECT d.refobjid::regclass::text || '.' || d.refobjsubid FROM pg_depend d
                                            WHERE d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid
                                              AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')))
      FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid, ns WHERE c.relnamespace = ns.oid
    UNION ALL
    SELECT 'type', t.oid::regtype::text,
           jsonb_build_object('kind', t.typtype, 'category', t.typcategory, 'relation', t.typrelid::regclass::text,
                              'base', CASE WHEN t.typbasetype <> 0 THEN format_type(t.typbasetype, t.typtypmod) END,
                              'not_null', t.typnotnull, 'default', t.typdefault,
                              'labels', (SELECT jsonb_agg(e.enumlabel ORDER BY e.enumsortorder)
                                           FROM pg_enum e WHERE e.enumtypid = t.oid),
                              'owner', t.typowner::regrole::text, 'acl', t.typacl::text[],
                              'comment', obj_description(t.oid, 'pg_type'))
      FROM pg_type t, ns WHERE t.typnamespace = ns.oid
    UNION ALL
    SELECT 'trigger', tg.tgrelid::regclass::text || ' ' || tg.tgname,
           jsonb_build_object('definition', pg_get_triggerdef(tg.oid), 'enabled', tg.tgenabled)
      FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid, ns WHERE c.relnamespace = ns.oid AND NOT tg.tgisinternal
    UNION ALL
    SELECT 'policy', po.polrelid::regclass::text || ' ' || po.polname,
           jsonb_build_object('command', po.polcmd, 'permissive', po.polpermissive,
                              'roles', (SELECT jsonb_agg(r::regrole::text ORDER BY r::regrole::text) FROM unnest(po.polroles) r),
                              'using', pg_get_expr(po.polqual, po.polrelid),
                              'check', pg_get_expr(po.polwithcheck, po.polrelid))
      FROM pg_policy po JOIN pg_class c ON c.oid = po.polrelid, ns WHERE c.relnamespace = ns.oid
    UNION ALL
    SELECT 'default_acl', coalesce(da.defaclrole::regrole::text, '') || ' ' || da.defaclobjtype::text,
           jsonb_build_object('acl', da.defaclacl::text[])
      FROM pg_default_acl da, ns WHERE da.defaclnamespace = ns.oid
    UNION ALL
    -- The privileges the extension's scripts granted (what pg_dump treats as
    -- the extension's own and leaves out of a dump).
    SELECT 'initial_privileges', pg_describe_object(ip.classoid, ip.objoid, ip.objsubid),
           jsonb_build_object('type', ip.privtype, 'acl', ip.initprivs::text[])
      FROM pg_init_privs ip, ext
     WHERE EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
                      AND d.classid = ip.classoid AND d.objid = ip.objoid)
    UNION ALL
    -- Roles are cluster-wide: those the extension's objects grant to, and
    -- their memberships among themselves (not the roles of whoever else
    -- uses the cluster).
    SELECT 'role', r.rolname::text,
           jsonb_build_object('login', r.rolcanlogin, 'superuser', r.rolsuper, 'inherit', r.rolinherit,
                              'create_role', r.rolcreaterole, 'create_db', r.rolcreatedb,
                              'bypass_rls', r.rolbypassrls)
      FROM pg_roles r WHERE r.oid IN (SELECT grantee FROM granted)
    UNION ALL
    SELECT 'membership', m.member::regrole::text || ' in ' || m.roleid::regrole::text,
           jsonb_build_object('admin', m.admin_option)
      FROM pg_auth_members m
     WHERE m.roleid IN (SELECT grantee FROM granted) AND m.member IN (SELECT grantee FROM granted)
)
SELECT kind || ' ' || ident || coalesce(' ' || jsonb_strip_nulls(details)::text, '')
  FROM facts
 ORDER BY kind, ident COLLATE "C", details::text COLLATE "C";
