//! Test databases installed from `target/sql-only/commitq.sql` (`make
//! sql-only`) instead of `CREATE EXTENSION`, for the layer
//! tests/sql_only/run.sh, which runs the same tests on both installs.
//!
//! `COMMITQ_TEST_INSTALL=sql-only` switches it on. `COMMITQ_TEST_INSTALL_AS`
//! names a role (CREATEROLE, not a superuser, as the admin user of a
//! managed service) that gets the database and loads the file, so commitq's
//! objects are owned by it, as they would be there.

use tokio_postgres::Client;

/// Whether test databases get the SQL-only install.
pub fn enabled() -> bool {
    std::env::var("COMMITQ_TEST_INSTALL").as_deref() == Ok("sql-only")
}

/// The database name for a test: its own, or with `_sqlonly` appended, so
/// that the two installs of one test never replace each other's database.
pub fn db_name(name: &str) -> String {
    if enabled() {
        format!("{name}_sqlonly")
    } else {
        name.to_string()
    }
}

/// Load the generated file into database `name` (at `url`), as the role of
/// `COMMITQ_TEST_INSTALL_AS` when set. `admin` is a superuser connection.
pub async fn install(admin: &Client, name: &str, url: &str) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/sql-only/commitq.sql"
    );
    let script = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e} (run `make sql-only` first)"));
    let url = match std::env::var("COMMITQ_TEST_INSTALL_AS") {
        Ok(role) => {
            let sql = format!("ALTER DATABASE \"{name}\" OWNER TO \"{role}\"");
            admin
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            format!("{url} user={role}")
        }
        Err(_) => url.to_string(),
    };
    crate::connect(&url)
        .await
        .batch_execute(&script)
        .await
        .unwrap_or_else(|e| panic!("load {path} into {name}: {e}"));
}
