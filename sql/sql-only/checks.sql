-- PL/pgSQL equivalents of the argument checks written in Rust
-- (extension/src/checks.rs, applying extension/src/rules.rs), for the install
-- without a library (`make sql-only`, docs/managed-postgres.md). Each
-- function here replaces the LANGUAGE c declaration of the same name and
-- arguments in sql/checks.sql, with the same results: the same messages, and
-- CQ001 raised by _check. tests/sql_only/run.sh compares the two on every
-- code point and on a table of cases, so a change to a rule in Rust that is
-- not made here fails that layer.
--
-- They pin their search_path like every other function of commitq, which
-- the C versions, running no SQL, had no need of; that and the interpreter
-- are most of what this mode costs on every enqueue and claim.

-- The one setting of the enqueue hot path is a server setting when the
-- library defines it (commitq.max_args_bytes); without the library it is a
-- column of commitq.config, which only its owner and commitq_operator may
-- change, so that a producer cannot raise its own limit.
ALTER TABLE commitq.config
    ADD COLUMN max_args_bytes integer NOT NULL DEFAULT 1048576
        CONSTRAINT config_max_args_bytes_check CHECK (max_args_bytes >= 1);

-- Raise CQ001 with "commitq: <problem>" when problem is not NULL.
CREATE FUNCTION commitq._check(problem text) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'CQ001', MESSAGE = 'commitq: ' || problem;
    END IF;
END
$$;

-- A name as the Rust checks show it in a message (Rust's `{:?}` of a str):
-- in double quotes, with \t \n \r \" \\ written so, and \u{hex} for every
-- character Rust does not print as it is (controls, format characters,
-- separators other than the space, unassigned and private-use code points,
-- combining marks). The class below is that set, taken from the library's
-- own messages; the layer tests/sql_only/run.sh checks it again on every
-- code point.
CREATE FUNCTION commitq._sql_only_quoted(name text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    escaped constant text := '[' ||
        E'\\u0001-\\u0008\\u000B-\\u000C\\u000E-\\u001F\\u007F-\\u00A0\\u00AD\\u0300-\\u036F\\u0378-\\u0379'
         '\\u0380-\\u0383\\u038B\\u038D\\u03A2\\u0483-\\u0489\\u0530\\u0557-\\u0558\\u058B-\\u058C\\u0590-\\u05BD'
         '\\u05BF\\u05C1-\\u05C2\\u05C4-\\u05C5\\u05C7-\\u05CF\\u05EB-\\u05EE\\u05F5-\\u0605\\u0610-\\u061A\\u061C'
         '\\u064B-\\u065F\\u0670\\u06D6-\\u06DD\\u06DF-\\u06E4\\u06E7-\\u06E8\\u06EA-\\u06ED\\u070E-\\u070F\\u0711'
         '\\u0730-\\u074C\\u07A6-\\u07B0\\u07B2-\\u07BF\\u07EB-\\u07F3\\u07FB-\\u07FD\\u0816-\\u0819'
         '\\u081B-\\u0823\\u0825-\\u0827\\u0829-\\u082F\\u083F\\u0859-\\u085D\\u085F\\u086B-\\u086F\\u0890-\\u089F'
         '\\u08CA-\\u0902\\u093A\\u093C\\u0941-\\u0948\\u094D\\u0951-\\u0957\\u0962-\\u0963\\u0981\\u0984'
         '\\u098D-\\u098E\\u0991-\\u0992\\u09A9\\u09B1\\u09B3-\\u09B5\\u09BA-\\u09BC\\u09BE\\u09C1-\\u09C6'
         '\\u09C9-\\u09CA\\u09CD\\u09CF-\\u09DB\\u09DE\\u09E2-\\u09E5\\u09FE-\\u0A02\\u0A04\\u0A0B-\\u0A0E'
         '\\u0A11-\\u0A12\\u0A29\\u0A31\\u0A34\\u0A37\\u0A3A-\\u0A3D\\u0A41-\\u0A58\\u0A5D\\u0A5F-\\u0A65'
         '\\u0A70-\\u0A71\\u0A75\\u0A77-\\u0A82\\u0A84\\u0A8E\\u0A92\\u0AA9\\u0AB1\\u0AB4\\u0ABA-\\u0ABC'
         '\\u0AC1-\\u0AC8\\u0ACA\\u0ACD-\\u0ACF\\u0AD1-\\u0ADF\\u0AE2-\\u0AE5\\u0AF2-\\u0AF8\\u0AFA-\\u0B01\\u0B04'
         '\\u0B0D-\\u0B0E\\u0B11-\\u0B12\\u0B29\\u0B31\\u0B34\\u0B3A-\\u0B3C\\u0B3E-\\u0B3F\\u0B41-\\u0B46'
         '\\u0B49-\\u0B4A\\u0B4D-\\u0B5B\\u0B5E\\u0B62-\\u0B65\\u0B78-\\u0B82\\u0B84\\u0B8B-\\u0B8D\\u0B91'
         '\\u0B96-\\u0B98\\u0B9B\\u0B9D\\u0BA0-\\u0BA2\\u0BA5-\\u0BA7\\u0BAB-\\u0BAD\\u0BBA-\\u0BBE\\u0BC0'
         '\\u0BC3-\\u0BC5\\u0BC9\\u0BCD-\\u0BCF\\u0BD1-\\u0BE5\\u0BFB-\\u0C00\\u0C04\\u0C0D\\u0C11\\u0C29'
         '\\u0C3A-\\u0C3C\\u0C3E-\\u0C40\\u0C45-\\u0C57\\u0C5B\\u0C5E-\\u0C5F\\u0C62-\\u0C65\\u0C70-\\u0C76\\u0C81'
         '\\u0C8D\\u0C91\\u0CA9\\u0CB4\\u0CBA-\\u0CBC\\u0CBF-\\u0CC0\\u0CC2\\u0CC5-\\u0CDB\\u0CDF\\u0CE2-\\u0CE5'
         '\\u0CF0\\u0CF4-\\u0D01\\u0D0D\\u0D11\\u0D3B-\\u0D3C\\u0D3E\\u0D41-\\u0D45\\u0D49\\u0D4D\\u0D50-\\u0D53'
         '\\u0D57\\u0D62-\\u0D65\\u0D80-\\u0D81\\u0D84\\u0D97-\\u0D99\\u0DB2\\u0DBC\\u0DBE-\\u0DBF\\u0DC7-\\u0DCF'
         '\\u0DD2-\\u0DD7\\u0DDF-\\u0DE5\\u0DF0-\\u0DF1\\u0DF5-\\u0E00\\u0E31\\u0E34-\\u0E3E\\u0E47-\\u0E4E'
         '\\u0E5C-\\u0E80\\u0E83\\u0E85\\u0E8B\\u0EA4\\u0EA6\\u0EB1\\u0EB4-\\u0EBC\\u0EBE-\\u0EBF\\u0EC5'
         '\\u0EC7-\\u0ECF\\u0EDA-\\u0EDB\\u0EE0-\\u0EFF\\u0F18-\\u0F19\\u0F35\\u0F37\\u0F39\\u0F48\\u0F6D-\\u0F7E'
         '\\u0F80-\\u0F84\\u0F86-\\u0F87\\u0F8D-\\u0FBD\\u0FC6\\u0FCD\\u0FDB-\\u0FFF\\u102D-\\u1030\\u1032-\\u1037'
         '\\u1039-\\u103A\\u103D-\\u103E\\u1058-\\u1059\\u105E-\\u1060\\u1071-\\u1074\\u1082\\u1085-\\u1086\\u108D'
         '\\u109D\\u10C6\\u10C8-\\u10CC\\u10CE-\\u10CF\\u1249\\u124E-\\u124F\\u1257\\u1259\\u125E-\\u125F\\u1289'
         '\\u128E-\\u128F\\u12B1\\u12B6-\\u12B7\\u12BF\\u12C1\\u12C6-\\u12C7\\u12D7\\u1311\\u1316-\\u1317'
         '\\u135B-\\u135F\\u137D-\\u137F\\u139A-\\u139F\\u13F6-\\u13F7\\u13FE-\\u13FF\\u1680\\u169D-\\u169F'
         '\\u16F9-\\u16FF\\u1712-\\u171E\\u1732-\\u1734\\u1737-\\u173F\\u1752-\\u175F\\u176D\\u1771-\\u177F'
         '\\u17B4-\\u17B5\\u17B7-\\u17BD\\u17C6\\u17C9-\\u17D3\\u17DD-\\u17DF\\u17EA-\\u17EF\\u17FA-\\u17FF'
         '\\u180B-\\u180F\\u181A-\\u181F\\u1879-\\u187F\\u1885-\\u1886\\u18A9\\u18AB-\\u18AF\\u18F6-\\u18FF'
         '\\u191F-\\u1922\\u1927-\\u1928\\u192C-\\u192F\\u1932\\u1939-\\u193F\\u1941-\\u1943\\u196E-\\u196F'
         '\\u1975-\\u197F\\u19AC-\\u19AF\\u19CA-\\u19CF\\u19DB-\\u19DD\\u1A17-\\u1A18\\u1A1B-\\u1A1D\\u1A56'
         '\\u1A58-\\u1A60\\u1A62\\u1A65-\\u1A6C\\u1A73-\\u1A7F\\u1A8A-\\u1A8F\\u1A9A-\\u1A9F\\u1AAE-\\u1B03'
         '\\u1B34-\\u1B3D\\u1B42-\\u1B44\\u1B4D\\u1B6B-\\u1B73\\u1B80-\\u1B81\\u1BA2-\\u1BA5\\u1BA8-\\u1BAD\\u1BE6'
         '\\u1BE8-\\u1BE9\\u1BED\\u1BEF-\\u1BFB\\u1C2C-\\u1C33\\u1C36-\\u1C3A\\u1C4A-\\u1C4C\\u1C8B-\\u1C8F'
         '\\u1CBB-\\u1CBC\\u1CC8-\\u1CD2\\u1CD4-\\u1CE0\\u1CE2-\\u1CE8\\u1CED\\u1CF4\\u1CF8-\\u1CF9\\u1CFB-\\u1CFF'
         '\\u1DC0-\\u1DFF\\u1F16-\\u1F17\\u1F1E-\\u1F1F\\u1F46-\\u1F47\\u1F4E-\\u1F4F\\u1F58\\u1F5A\\u1F5C\\u1F5E'
         '\\u1F7E-\\u1F7F\\u1FB5\\u1FC5\\u1FD4-\\u1FD5\\u1FDC\\u1FF0-\\u1FF1\\u1FF5\\u1FFF-\\u200F\\u2028-\\u202F'
         '\\u205F-\\u206F\\u2072-\\u2073\\u208F\\u209D-\\u209F\\u20C2-\\u20FF\\u218C-\\u218F\\u242A-\\u243F'
         '\\u244B-\\u245F\\u2B74-\\u2B75\\u2CEF-\\u2CF1\\u2CF4-\\u2CF8\\u2D26\\u2D28-\\u2D2C\\u2D2E-\\u2D2F'
         '\\u2D68-\\u2D6E\\u2D71-\\u2D7F\\u2D97-\\u2D9F\\u2DA7\\u2DAF\\u2DB7\\u2DBF\\u2DC7\\u2DCF\\u2DD7'
         '\\u2DDF-\\u2DFF\\u2E5E-\\u2E7F\\u2E9A\\u2EF4-\\u2EFF\\u2FD6-\\u2FEF\\u3000\\u302A-\\u302F\\u3040'
         '\\u3097-\\u309A\\u3100-\\u3104\\u3130\\u318F\\u31E6-\\u31EE\\u321F\\uA48D-\\uA48F\\uA4C7-\\uA4CF'
         '\\uA62C-\\uA63F\\uA66F-\\uA672\\uA674-\\uA67D\\uA69E-\\uA69F\\uA6F0-\\uA6F1\\uA6F8-\\uA6FF'
         '\\uA7DD-\\uA7F0\\uA802\\uA806\\uA80B\\uA825-\\uA826\\uA82C-\\uA82F\\uA83A-\\uA83F\\uA878-\\uA87F'
         '\\uA8C4-\\uA8CD\\uA8DA-\\uA8F1\\uA8FF\\uA926-\\uA92D\\uA947-\\uA951\\uA953-\\uA95E\\uA97D-\\uA982\\uA9B3'
         '\\uA9B6-\\uA9B9\\uA9BC-\\uA9BD\\uA9C0\\uA9CE\\uA9DA-\\uA9DD\\uA9E5\\uA9FF\\uAA29-\\uAA2E\\uAA31-\\uAA32'
         '\\uAA35-\\uAA3F\\uAA43\\uAA4C\\uAA4E-\\uAA4F\\uAA5A-\\uAA5B\\uAA7C\\uAAB0\\uAAB2-\\uAAB4\\uAAB7-\\uAAB8'
         '\\uAABE-\\uAABF\\uAAC1\\uAAC3-\\uAADA\\uAAEC-\\uAAED\\uAAF6-\\uAB00\\uAB07-\\uAB08\\uAB0F-\\uAB10'
         '\\uAB17-\\uAB1F\\uAB27\\uAB2F\\uAB6C-\\uAB6F\\uABE5\\uABE8\\uABED-\\uABEF\\uABFA-\\uABFF\\uD7A4-\\uD7AF'
         '\\uD7C7-\\uD7CA\\uD7FC-\\uF8FF\\uFA6E-\\uFA6F\\uFADA-\\uFAFF\\uFB07-\\uFB12\\uFB18-\\uFB1C\\uFB1E\\uFB37'
         '\\uFB3D\\uFB3F\\uFB42\\uFB45\\uFDD0-\\uFDEF\\uFE00-\\uFE0F\\uFE1A-\\uFE2F\\uFE53\\uFE67\\uFE6C-\\uFE6F'
         '\\uFE75\\uFEFD-\\uFF00\\uFF9E-\\uFF9F\\uFFBF-\\uFFC1\\uFFC8-\\uFFC9\\uFFD0-\\uFFD1\\uFFD8-\\uFFD9'
         '\\uFFDD-\\uFFDF\\uFFE7\\uFFEF-\\uFFFB\\uFFFE-\\uFFFF\\U0001000C\\U00010027\\U0001003B\\U0001003E'
         '\\U0001004E-\\U0001004F\\U0001005E-\\U0001007F\\U000100FB-\\U000100FF\\U00010103-\\U00010106'
         '\\U00010134-\\U00010136\\U0001018F\\U0001019D-\\U0001019F\\U000101A1-\\U000101CF'
         '\\U000101FD-\\U0001027F\\U0001029D-\\U0001029F\\U000102D1-\\U000102E0\\U000102FC-\\U000102FF'
         '\\U00010324-\\U0001032C\\U0001034B-\\U0001034F\\U00010376-\\U0001037F\\U0001039E'
         '\\U000103C4-\\U000103C7\\U000103D6-\\U000103FF\\U0001049E-\\U0001049F\\U000104AA-\\U000104AF'
         '\\U000104D4-\\U000104D7\\U000104FC-\\U000104FF\\U00010528-\\U0001052F\\U00010564-\\U0001056E'
         '\\U0001057B\\U0001058B\\U00010593\\U00010596\\U000105A2\\U000105B2\\U000105BA'
         '\\U000105BD-\\U000105BF\\U000105F4-\\U000105FF\\U00010737-\\U0001073F\\U00010756-\\U0001075F'
         '\\U00010768-\\U0001077F\\U00010786\\U000107B1\\U000107BB-\\U000107FF\\U00010806-\\U00010807'
         '\\U00010809\\U00010836\\U00010839-\\U0001083B\\U0001083D-\\U0001083E\\U00010856'
         '\\U0001089F-\\U000108A6\\U000108B0-\\U000108DF\\U000108F3\\U000108F6-\\U000108FA'
         '\\U0001091C-\\U0001091E\\U0001093A-\\U0001093E\\U0001095A-\\U0001097F\\U000109B8-\\U000109BB'
         '\\U000109D0-\\U000109D1\\U00010A01-\\U00010A0F\\U00010A14\\U00010A18\\U00010A36-\\U00010A3F'
         '\\U00010A49-\\U00010A4F\\U00010A59-\\U00010A5F\\U00010AA0-\\U00010ABF\\U00010AE5-\\U00010AEA'
         '\\U00010AF7-\\U00010AFF\\U00010B36-\\U00010B38\\U00010B56-\\U00010B57\\U00010B73-\\U00010B77'
         '\\U00010B92-\\U00010B98\\U00010B9D-\\U00010BA8\\U00010BB0-\\U00010BFF\\U00010C49-\\U00010C7F'
         '\\U00010CB3-\\U00010CBF\\U00010CF3-\\U00010CF9\\U00010D24-\\U00010D2F\\U00010D3A-\\U00010D3F'
         '\\U00010D66-\\U00010D6D\\U00010D86-\\U00010D8D\\U00010D90-\\U00010E5F\\U00010E7F'
         '\\U00010EAA-\\U00010EAC\\U00010EAE-\\U00010EAF\\U00010EB2-\\U00010EC1\\U00010EC8-\\U00010ECF'
         '\\U00010ED9-\\U00010EFF\\U00010F28-\\U00010F2F\\U00010F46-\\U00010F50\\U00010F5A-\\U00010F6F'
         '\\U00010F82-\\U00010F85\\U00010F8A-\\U00010FAF\\U00010FCC-\\U00010FDF\\U00010FF7-\\U00010FFF'
         '\\U00011001\\U00011038-\\U00011046\\U0001104E-\\U00011051\\U00011070\\U00011073-\\U00011074'
         '\\U00011076-\\U00011081\\U000110B3-\\U000110B6\\U000110B9-\\U000110BA\\U000110BD'
         '\\U000110C2-\\U000110CF\\U000110E9-\\U000110EF\\U000110FA-\\U00011102\\U00011127-\\U0001112B'
         '\\U0001112D-\\U00011135\\U00011148-\\U0001114F\\U00011173\\U00011177-\\U00011181'
         '\\U000111B6-\\U000111BE\\U000111C0\\U000111C9-\\U000111CC\\U000111CF\\U000111E0'
         '\\U000111F5-\\U000111FF\\U00011212\\U0001122F-\\U00011231\\U00011234-\\U00011237\\U0001123E'
         '\\U00011241-\\U0001127F\\U00011287\\U00011289\\U0001128E\\U0001129E\\U000112AA-\\U000112AF'
         '\\U000112DF\\U000112E3-\\U000112EF\\U000112FA-\\U00011301\\U00011304\\U0001130D-\\U0001130E'
         '\\U00011311-\\U00011312\\U00011329\\U00011331\\U00011334\\U0001133A-\\U0001133C\\U0001133E'
         '\\U00011340\\U00011345-\\U00011346\\U00011349-\\U0001134A\\U0001134D-\\U0001134F'
         '\\U00011351-\\U0001135C\\U00011364-\\U0001137F\\U0001138A\\U0001138C-\\U0001138D\\U0001138F'
         '\\U000113B6\\U000113B8\\U000113BB-\\U000113C9\\U000113CB\\U000113CE-\\U000113D0\\U000113D2'
         '\\U000113D6\\U000113D9-\\U000113FF\\U00011438-\\U0001143F\\U00011442-\\U00011444\\U00011446'
         '\\U0001145C\\U0001145E\\U00011462-\\U0001147F\\U000114B0\\U000114B3-\\U000114B8\\U000114BA'
         '\\U000114BD\\U000114BF-\\U000114C0\\U000114C2-\\U000114C3\\U000114C8-\\U000114CF'
         '\\U000114DA-\\U0001157F\\U000115AF\\U000115B2-\\U000115B7\\U000115BC-\\U000115BD'
         '\\U000115BF-\\U000115C0\\U000115DC-\\U000115FF\\U00011633-\\U0001163A\\U0001163D'
         '\\U0001163F-\\U00011640\\U00011645-\\U0001164F\\U0001165A-\\U0001165F\\U0001166D-\\U0001167F'
         '\\U000116AB\\U000116AD\\U000116B0-\\U000116B7\\U000116BA-\\U000116BF\\U000116CA-\\U000116CF'
         '\\U000116E4-\\U000116FF\\U0001171B-\\U0001171D\\U0001171F\\U00011722-\\U00011725'
         '\\U00011727-\\U0001172F\\U00011747-\\U000117FF\\U0001182F-\\U00011837\\U00011839-\\U0001183A'
         '\\U0001183C-\\U0001189F\\U000118F3-\\U000118FE\\U00011907-\\U00011908\\U0001190A-\\U0001190B'
         '\\U00011914\\U00011917\\U00011930\\U00011936\\U00011939-\\U0001193E\\U00011943'
         '\\U00011947-\\U0001194F\\U0001195A-\\U0001199F\\U000119A8-\\U000119A9\\U000119D4-\\U000119DB'
         '\\U000119E0\\U000119E5-\\U000119FF\\U00011A01-\\U00011A0A\\U00011A33-\\U00011A38'
         '\\U00011A3B-\\U00011A3E\\U00011A47-\\U00011A4F\\U00011A51-\\U00011A56\\U00011A59-\\U00011A5B'
         '\\U00011A8A-\\U00011A96\\U00011A98-\\U00011A99\\U00011AA3-\\U00011AAF\\U00011AF9-\\U00011AFF'
         '\\U00011B0A-\\U00011B60\\U00011B62-\\U00011B64\\U00011B66\\U00011B68-\\U00011BBF'
         '\\U00011BE2-\\U00011BEF\\U00011BFA-\\U00011BFF\\U00011C09\\U00011C30-\\U00011C3D\\U00011C3F'
         '\\U00011C46-\\U00011C4F\\U00011C6D-\\U00011C6F\\U00011C90-\\U00011CA8\\U00011CAA-\\U00011CB0'
         '\\U00011CB2-\\U00011CB3\\U00011CB5-\\U00011CFF\\U00011D07\\U00011D0A\\U00011D31-\\U00011D45'
         '\\U00011D47-\\U00011D4F\\U00011D5A-\\U00011D5F\\U00011D66\\U00011D69\\U00011D8F-\\U00011D92'
         '\\U00011D95\\U00011D97\\U00011D99-\\U00011D9F\\U00011DAA-\\U00011DAF\\U00011DDC-\\U00011DDF'
         '\\U00011DEA-\\U00011EDF\\U00011EF3-\\U00011EF4\\U00011EF9-\\U00011F01\\U00011F11'
         '\\U00011F36-\\U00011F3D\\U00011F40-\\U00011F42\\U00011F5A-\\U00011FAF\\U00011FB1-\\U00011FBF'
         '\\U00011FF2-\\U00011FFE\\U0001239A-\\U000123FF\\U0001246F\\U00012475-\\U0001247F'
         '\\U00012544-\\U00012F8F\\U00012FF3-\\U00012FFF\\U00013430-\\U00013440\\U00013447-\\U0001345F'
         '\\U000143FB-\\U000143FF\\U00014647-\\U000160FF\\U0001611E-\\U00016129\\U0001612D-\\U0001612F'
         '\\U0001613A-\\U000167FF\\U00016A39-\\U00016A3F\\U00016A5F\\U00016A6A-\\U00016A6D\\U00016ABF'
         '\\U00016ACA-\\U00016ACF\\U00016AEE-\\U00016AF4\\U00016AF6-\\U00016AFF\\U00016B30-\\U00016B36'
         '\\U00016B46-\\U00016B4F\\U00016B5A\\U00016B62\\U00016B78-\\U00016B7C\\U00016B90-\\U00016D3F'
         '\\U00016D7A-\\U00016E3F\\U00016E9B-\\U00016E9F\\U00016EB9-\\U00016EBA\\U00016ED4-\\U00016EFF'
         '\\U00016F4B-\\U00016F4F\\U00016F88-\\U00016F92\\U00016FA0-\\U00016FDF\\U00016FE4-\\U00016FF1'
         '\\U00016FF7-\\U00016FFF\\U00018CD6-\\U00018CFE\\U00018D1F-\\U00018D7F\\U00018DF3-\\U0001AFEF'
         '\\U0001AFF4\\U0001AFFC\\U0001AFFF\\U0001B123-\\U0001B131\\U0001B133-\\U0001B14F'
         '\\U0001B153-\\U0001B154\\U0001B156-\\U0001B163\\U0001B168-\\U0001B16F\\U0001B2FC-\\U0001BBFF'
         '\\U0001BC6B-\\U0001BC6F\\U0001BC7D-\\U0001BC7F\\U0001BC89-\\U0001BC8F\\U0001BC9A-\\U0001BC9B'
         '\\U0001BC9D-\\U0001BC9E\\U0001BCA0-\\U0001CBFF\\U0001CCFD-\\U0001CCFF\\U0001CEB4-\\U0001CEB9'
         '\\U0001CED1-\\U0001CEDF\\U0001CEF1-\\U0001CF4F\\U0001CFC4-\\U0001CFFF\\U0001D0F6-\\U0001D0FF'
         '\\U0001D127-\\U0001D128\\U0001D165-\\U0001D169\\U0001D16D-\\U0001D182\\U0001D185-\\U0001D18B'
         '\\U0001D1AA-\\U0001D1AD\\U0001D1EB-\\U0001D1FF\\U0001D242-\\U0001D244\\U0001D246-\\U0001D2BF'
         '\\U0001D2D4-\\U0001D2DF\\U0001D2F4-\\U0001D2FF\\U0001D357-\\U0001D35F\\U0001D379-\\U0001D3FF'
         '\\U0001D455\\U0001D49D\\U0001D4A0-\\U0001D4A1\\U0001D4A3-\\U0001D4A4\\U0001D4A7-\\U0001D4A8'
         '\\U0001D4AD\\U0001D4BA\\U0001D4BC\\U0001D4C4\\U0001D506\\U0001D50B-\\U0001D50C\\U0001D515'
         '\\U0001D51D\\U0001D53A\\U0001D53F\\U0001D545\\U0001D547-\\U0001D549\\U0001D551'
         '\\U0001D6A6-\\U0001D6A7\\U0001D7CC-\\U0001D7CD\\U0001DA00-\\U0001DA36\\U0001DA3B-\\U0001DA6C'
         '\\U0001DA75\\U0001DA84\\U0001DA8C-\\U0001DEFF\\U0001DF1F-\\U0001DF24\\U0001DF2B-\\U0001E02F'
         '\\U0001E06E-\\U0001E0FF\\U0001E12D-\\U0001E136\\U0001E13E-\\U0001E13F\\U0001E14A-\\U0001E14D'
         '\\U0001E150-\\U0001E28F\\U0001E2AE-\\U0001E2BF\\U0001E2EC-\\U0001E2EF\\U0001E2FA-\\U0001E2FE'
         '\\U0001E300-\\U0001E4CF\\U0001E4EC-\\U0001E4EF\\U0001E4FA-\\U0001E5CF\\U0001E5EE-\\U0001E5EF'
         '\\U0001E5FB-\\U0001E5FE\\U0001E600-\\U0001E6BF\\U0001E6DF\\U0001E6E3\\U0001E6E6'
         '\\U0001E6EE-\\U0001E6EF\\U0001E6F5-\\U0001E6FD\\U0001E700-\\U0001E7DF\\U0001E7E7\\U0001E7EC'
         '\\U0001E7EF\\U0001E7FF\\U0001E8C5-\\U0001E8C6\\U0001E8D0-\\U0001E8FF\\U0001E944-\\U0001E94A'
         '\\U0001E94C-\\U0001E94F\\U0001E95A-\\U0001E95D\\U0001E960-\\U0001EC70\\U0001ECB5-\\U0001ED00'
         '\\U0001ED3E-\\U0001EDFF\\U0001EE04\\U0001EE20\\U0001EE23\\U0001EE25-\\U0001EE26\\U0001EE28'
         '\\U0001EE33\\U0001EE38\\U0001EE3A\\U0001EE3C-\\U0001EE41\\U0001EE43-\\U0001EE46\\U0001EE48'
         '\\U0001EE4A\\U0001EE4C\\U0001EE50\\U0001EE53\\U0001EE55-\\U0001EE56\\U0001EE58\\U0001EE5A'
         '\\U0001EE5C\\U0001EE5E\\U0001EE60\\U0001EE63\\U0001EE65-\\U0001EE66\\U0001EE6B\\U0001EE73'
         '\\U0001EE78\\U0001EE7D\\U0001EE7F\\U0001EE8A\\U0001EE9C-\\U0001EEA0\\U0001EEA4\\U0001EEAA'
         '\\U0001EEBC-\\U0001EEEF\\U0001EEF2-\\U0001EFFF\\U0001F02C-\\U0001F02F\\U0001F094-\\U0001F09F'
         '\\U0001F0AF-\\U0001F0B0\\U0001F0C0\\U0001F0D0\\U0001F0F6-\\U0001F0FF\\U0001F1AE-\\U0001F1E5'
         '\\U0001F203-\\U0001F20F\\U0001F23C-\\U0001F23F\\U0001F249-\\U0001F24F\\U0001F252-\\U0001F25F'
         '\\U0001F266-\\U0001F2FF\\U0001F6D9-\\U0001F6DB\\U0001F6ED-\\U0001F6EF\\U0001F6FD-\\U0001F6FF'
         '\\U0001F7DA-\\U0001F7DF\\U0001F7EC-\\U0001F7EF\\U0001F7F1-\\U0001F7FF\\U0001F80C-\\U0001F80F'
         '\\U0001F848-\\U0001F84F\\U0001F85A-\\U0001F85F\\U0001F888-\\U0001F88F\\U0001F8AE-\\U0001F8AF'
         '\\U0001F8BC-\\U0001F8BF\\U0001F8C2-\\U0001F8CF\\U0001F8D9-\\U0001F8FF\\U0001FA58-\\U0001FA5F'
         '\\U0001FA6E-\\U0001FA6F\\U0001FA7D-\\U0001FA7F\\U0001FA8B-\\U0001FA8D\\U0001FAC7'
         '\\U0001FAC9-\\U0001FACC\\U0001FADD-\\U0001FADE\\U0001FAEB-\\U0001FAEE\\U0001FAF9-\\U0001FAFF'
         '\\U0001FB93\\U0001FBFB-\\U0001FFFF\\U0002A6E0-\\U0002A6FF\\U0002B81E-\\U0002B81F'
         '\\U0002CEAE-\\U0002CEAF\\U0002EBE1-\\U0002EBEF\\U0002EE5E-\\U0002F7FF\\U0002FA1E-\\U0002FFFF'
         '\\U0003134B-\\U0003134F\\U0003347A-\\U0010FFFF' || ']';
BEGIN
    RETURN '"' || coalesce(
        (SELECT string_agg(CASE WHEN t.c = '"' THEN E'\\"'
                                WHEN t.c = E'\\' THEN E'\\\\'
                                WHEN t.c = E'\t' THEN E'\\t'
                                WHEN t.c = E'\n' THEN E'\\n'
                                WHEN t.c = E'\r' THEN E'\\r'
                                WHEN t.c ~ escaped THEN E'\\u{' || to_hex(ascii(t.c)) || '}'
                                ELSE t.c END, '' ORDER BY t.n)
           FROM regexp_split_to_table(name, '') WITH ORDINALITY AS t(c, n)), '') || '"';
END
$$;

-- Characters that are not printable text, as rules::is_unprintable: controls
-- (Cc), format characters (Cf of Unicode 15, the same ranges as rules.rs)
-- and the line and paragraph separators (Zl, Zp). A key with one is refused.
CREATE FUNCTION commitq._sql_only_printable_key(key text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN octet_length(key) BETWEEN 1 AND 255
       AND key !~ (E'[\\u0001-\\u001F\\u007F-\\u009F\\u2028\\u2029'
                   '\\u00AD\\u0600-\\u0605\\u061C\\u06DD\\u070F\\u0890-\\u0891\\u08E2\\u180E'
                   '\\u200B-\\u200F\\u202A-\\u202E\\u2060-\\u2064\\u2066-\\u206F\\uFEFF\\uFFF9-\\uFFFB'
                   '\\U000110BD\\U000110CD\\U00013430-\\U0001343F\\U0001BCA0-\\U0001BCA3'
                   '\\U0001D173-\\U0001D17A\\U000E0001\\U000E0020-\\U000E007F]');
END
$$;

-- A queue name: 1 to 48 of a-z 0-9 _ . -, starting with a letter or digit
-- ('commitq:' || queue must fit a NOTIFY channel).
CREATE FUNCTION commitq._queue_problem(queue text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF queue IS NULL THEN
        RETURN 'queue must not be NULL';
    ELSIF queue ~ '^[a-z0-9][a-z0-9_.-]{0,47}$' THEN
        RETURN NULL;
    END IF;
    RETURN format('invalid queue name %s: use 1 to 48 of a-z 0-9 _ . - starting with a letter or digit',
                  commitq._sql_only_quoted(queue));
END
$$;

-- Everything that can be wrong with one job to enqueue: names, args (type
-- and size against commitq.config.max_args_bytes), priority, max_attempts,
-- run_at, idempotency and concurrency keys. In the order of
-- rules::job_problem, which decides which problem is named first.
CREATE FUNCTION commitq._job_problem(
    queue text,
    kind text,
    args_type text,
    args_bytes integer,
    priority integer,
    max_attempts integer,
    run_at_finite boolean,
    idempotency_key text,
    concurrency_key text)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_max integer;
BEGIN
    IF queue IS NULL THEN
        RETURN 'queue must not be NULL';
    ELSIF kind IS NULL THEN
        RETURN 'kind must not be NULL';
    ELSIF queue !~ '^[a-z0-9][a-z0-9_.-]{0,47}$' THEN
        RETURN commitq._queue_problem(queue);
    ELSIF kind !~ '^[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,127}$' THEN
        RETURN format('invalid kind %s: use 1 to 128 of A-Z a-z 0-9 _ . : / - starting with a letter, digit or _',
                      commitq._sql_only_quoted(kind));
    ELSIF args_type IS NULL THEN
        RETURN 'args must not be NULL (use ''{}'' for none)';
    ELSIF args_type <> 'object' THEN
        RETURN 'args must be a JSON object, not ' || args_type;
    END IF;
    IF args_bytes IS NOT NULL THEN
        v_max := commitq._max_args_bytes();
        IF args_bytes > v_max THEN
            RETURN format('args too large: %s bytes, limit is %s (commitq.config.max_args_bytes)',
                          args_bytes, v_max);
        END IF;
    END IF;
    IF priority IS NULL THEN
        RETURN 'priority must not be NULL';
    ELSIF priority NOT BETWEEN -32768 AND 32767 THEN
        RETURN format('priority %s out of range -32768..32767', priority);
    ELSIF max_attempts IS NULL THEN
        RETURN 'max_attempts must not be NULL';
    ELSIF max_attempts NOT BETWEEN 1 AND 1000 THEN
        RETURN format('max_attempts %s out of range 1..1000', max_attempts);
    ELSIF run_at_finite = false THEN
        RETURN 'run_at must be a finite timestamp';
    ELSIF idempotency_key IS NOT NULL AND NOT commitq._sql_only_printable_key(idempotency_key) THEN
        RETURN 'invalid idempotency_key: use 1 to 255 bytes of printable text';
    ELSIF concurrency_key IS NOT NULL AND NOT commitq._sql_only_printable_key(concurrency_key) THEN
        RETURN 'invalid concurrency_key: use 1 to 255 bytes of printable text';
    END IF;
    RETURN NULL;
END
$$;

-- The worker name (1 to 200 characters) and lease (1 second..7 days) of a
-- claim. Intervals compare as PostgreSQL compares them, a month as 30 days,
-- as rules::lease_in_range does.
CREATE FUNCTION commitq._worker_lease_problem(worker text, lease interval) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF worker IS NULL THEN
        RETURN 'worker must not be NULL';
    ELSIF char_length(worker) NOT BETWEEN 1 AND 200 THEN
        RETURN 'worker must be 1 to 200 characters';
    ELSIF lease IS NULL THEN
        RETURN 'lease NULL out of range 1 second..7 days';
    ELSIF lease NOT BETWEEN interval '1 second' AND interval '7 days' THEN
        RETURN format('lease %s out of range 1 second..7 days', lease);
    END IF;
    RETURN NULL;
END
$$;

-- A batch of (job_id, lease_token) pairs: two arrays of the same length.
CREATE FUNCTION commitq._batch_problem(ids bigint[], tokens bigint[]) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF ids IS NULL OR tokens IS NULL THEN
        RETURN 'job_ids and lease_tokens must not be NULL';
    ELSIF cardinality(ids) <> cardinality(tokens) THEN
        RETURN 'job_ids and lease_tokens must have the same length';
    END IF;
    RETURN NULL;
END
$$;

-- The name (printable, 1 to 255 bytes), owner and ttl (1 second..7 days) of
-- a named lease.
CREATE FUNCTION commitq._lease_args_problem(name text, owner text, ttl interval) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF name IS NULL THEN
        RETURN 'lease name must not be NULL';
    ELSIF owner IS NULL THEN
        RETURN 'owner must not be NULL';
    ELSIF ttl IS NULL THEN
        RETURN 'ttl must not be NULL';
    ELSIF NOT commitq._sql_only_printable_key(name) THEN
        RETURN 'lease name must be 1 to 255 bytes of printable text';
    ELSIF octet_length(owner) NOT BETWEEN 1 AND 255 THEN
        RETURN 'owner must be 1 to 255 bytes';
    ELSIF ttl NOT BETWEEN interval '1 second' AND interval '7 days' THEN
        RETURN 'ttl out of range 1 second..7 days';
    END IF;
    RETURN NULL;
END
$$;

-- The largest accepted args, in bytes of stored jsonb: the column of
-- commitq.config that stands for the setting commitq.max_args_bytes.
CREATE FUNCTION commitq._max_args_bytes() RETURNS integer
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT c.max_args_bytes FROM commitq.config c);
END
$$;
