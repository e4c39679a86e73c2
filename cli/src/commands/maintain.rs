//! `commitq maintain`: one housekeeping pass (commitq.maintain()), for a
//! database where neither the engine nor a worker pool runs it.

use crate::error::CliError;
use crate::output::{self, Table};

pub async fn run(client: &commitq::Client, json: bool) -> Result<(), CliError> {
    let db = client.pool().get().await?;
    let row = db
        .query_one("SELECT * FROM commitq.maintain()", &[])
        .await?;
    let mut fields = serde_json::Map::new();
    for (i, c) in row.columns().iter().enumerate() {
        let n: i64 = row.get(i);
        fields.insert(c.name().to_string(), n.into());
    }
    if json {
        print!("{}", output::json(&fields));
    } else {
        let mut t = Table::new(&["STEP", "ROWS"]);
        for (k, v) in &fields {
            t.row(vec![k.clone(), v.to_string()]);
        }
        print!("{}", t.render());
    }
    Ok(())
}
