//! Cron schedules' ticks (sql/schedule.sql): parsing a cron expression and
//! listing its ticks in a time zone. The SQL side decides which ticks fire
//! and makes each fire once (a primary key on (schedule, tick)); this file
//! only computes instants, so any number of evaluators compute the same ones.
//!
//! Parsing and the calendar are croner's (5 fields, 6 with seconds, the
//! @yearly..@hourly aliases, OCPS daylight-saving rules); time zones are
//! chrono-tz's copy of the IANA database. Declared by hand in
//! sql/schedule.sql, as the checks of checks.rs are.

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use pgrx::prelude::*;

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 UTC).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The most ticks one evaluation returns: a schedule every second that was
/// not evaluated for a day gives its latest ticks, the cursor moves past
/// them, and the older ones count as missed.
const MAX_TICKS: usize = 10_000;

fn parse(cron: &str) -> Result<Cron, String> {
    let trimmed = cron.trim();
    let fields = trimmed.split_whitespace().count();
    if !trimmed.starts_with('@') && !(5..=6).contains(&fields) {
        return Err(format!(
            "invalid cron expression {cron:?}: use 5 fields (minute hour day month weekday), \
             6 with seconds first, or @yearly @monthly @weekly @daily @hourly"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(trimmed)
        .map_err(|e| format!("invalid cron expression {cron:?}: {e}"))
}

fn zone(timezone: &str) -> Result<Tz, String> {
    timezone.parse::<Tz>().map_err(|_| {
        format!("unknown timezone {timezone:?}: use an IANA name such as UTC or Europe/Berlin")
    })
}

fn to_utc(ts: TimestampWithTimeZone) -> Option<DateTime<Utc>> {
    if !ts.is_finite() {
        return None;
    }
    let micros = ts.into_inner().checked_add(PG_EPOCH_MICROS)?;
    Utc.timestamp_micros(micros).single()
}

fn from_utc<T: TimeZone>(t: &DateTime<T>) -> TimestampWithTimeZone {
    let micros = t.timestamp_micros() - PG_EPOCH_MICROS;
    TimestampWithTimeZone::try_from(micros)
        .unwrap_or_else(|_| TimestampWithTimeZone::positive_infinity())
}

fn schedule(cron: &str, timezone: &str) -> (Cron, Tz) {
    match (parse(cron), zone(timezone)) {
        (Ok(c), Ok(z)) => (c, z),
        (Err(e), _) | (_, Err(e)) => error!("commitq: {e}"),
    }
}

/// What is wrong with a cron expression and its time zone, or NULL.
#[pg_extern(sql = false)]
pub fn cron_problem(cron: Option<&str>, timezone: Option<&str>) -> Option<String> {
    let Some(cron) = cron else {
        return Some("cron must not be NULL".into());
    };
    let Some(timezone) = timezone else {
        return Some("timezone must not be NULL".into());
    };
    let tz = match zone(timezone) {
        Ok(tz) => tz,
        Err(e) => return Some(e),
    };
    let parsed = match parse(cron) {
        Ok(c) => c,
        Err(e) => return Some(e),
    };
    // A pattern that parses but never matches (30 February) has no tick.
    let now = Utc::now().with_timezone(&tz);
    if parsed.find_next_occurrence(&now, false).is_err() {
        return Some(format!("cron expression {cron:?} never matches"));
    }
    None
}

/// The ticks that are due at `until` for a schedule whose ticks up to
/// `after` were handled, in ascending order: the latest tick in
/// (after, until], and every tick in (after, until] no older than `until -
/// backfill`. Ticks are found by walking forward from `after`, so every
/// evaluator finds the same instants (a backward search may pick the other
/// half of a repeated hour on a fall-back day).
#[pg_extern(sql = false)]
pub fn cron_due(
    cron: &str,
    timezone: &str,
    after: TimestampWithTimeZone,
    until: TimestampWithTimeZone,
    backfill: Option<Interval>,
) -> Vec<TimestampWithTimeZone> {
    let (parsed, tz) = schedule(cron, timezone);
    let (Some(after), Some(until)) = (to_utc(after), to_utc(until)) else {
        return Vec::new();
    };
    if until <= after {
        return Vec::new();
    }
    // Walking a schedule every second over a month is too long: start near
    // the latest tick, found backwards, less a margin wider than any
    // daylight-saving shift, so that the forward walk meets it again.
    let margin = chrono::Duration::hours(3);
    let window_start = backfill
        .map(|b| {
            until
                - chrono::Duration::microseconds(
                    i64::try_from(b.as_micros().max(0)).unwrap_or(i64::MAX),
                )
        })
        .unwrap_or(until);
    let latest_back = parsed
        .find_previous_occurrence(&until.with_timezone(&tz), true)
        .ok()
        .map(|t| t.with_timezone(&Utc));
    let start = match latest_back {
        Some(t) => after.max((t - margin).min(window_start - margin)),
        None => return Vec::new(),
    };
    let mut ticks: Vec<DateTime<Utc>> = Vec::new();
    let from = start.with_timezone(&tz);
    for t in parsed.iter_after(from) {
        let t = t.with_timezone(&Utc);
        if t > until {
            break;
        }
        if t <= after {
            continue;
        }
        ticks.push(t);
    }
    let Some(&latest) = ticks.last() else {
        return Vec::new();
    };
    let mut due: Vec<DateTime<Utc>> = ticks
        .into_iter()
        .filter(|t| backfill.is_some() && *t >= window_start)
        .collect();
    if due.last() != Some(&latest) {
        due.push(latest);
    }
    if due.len() > MAX_TICKS {
        due.drain(..due.len() - MAX_TICKS);
    }
    due.iter().map(from_utc).collect()
}

/// The first tick of a schedule after `after`, or NULL if there is none.
#[pg_extern(sql = false)]
pub fn cron_next(
    cron: &str,
    timezone: &str,
    after: TimestampWithTimeZone,
) -> Option<TimestampWithTimeZone> {
    let (parsed, tz) = schedule(cron, timezone);
    let after = to_utc(after)?.with_timezone(&tz);
    parsed
        .find_next_occurrence(&after, false)
        .ok()
        .map(|t| from_utc(&t))
}
