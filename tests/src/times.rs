//! Times as the API writes them and receivers are sent them: RFC 3339 in the delivery log,
//! HTTP dates in `Retry-After`; parsed and written here by hand, independently of the host.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;

/// The instant an RFC 3339 string such as `2024-05-01T12:00:00.123Z` names.
pub fn time_of(value: &Value) -> Result<SystemTime> {
    let text = value.as_str().with_context(|| format!("{value} is not a string"))?;
    parse_rfc3339(text).with_context(|| format!("{text:?} is not an RFC 3339 time"))
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`.
pub fn parse_rfc3339(text: &str) -> Result<SystemTime> {
    let bytes = text.as_bytes();
    ensure!(bytes.len() >= 20, "too short");
    ensure!(
        bytes[4] == b'-'
            && bytes[7] == b'-'
            && matches!(bytes[10], b'T' | b't')
            && bytes[13] == b':'
            && bytes[16] == b':',
        "misplaced separators"
    );
    let number = |from: usize, to: usize| -> Result<i64> {
        let digits = &text[from..to];
        ensure!(digits.bytes().all(|b| b.is_ascii_digit()), "{digits:?} is not a number");
        Ok(digits.parse()?)
    };
    let (year, month, day) = (number(0, 4)?, number(5, 7)?, number(8, 10)?);
    let (hour, minute, second) = (number(11, 13)?, number(14, 16)?, number(17, 19)?);
    ensure!(
        (1..=12).contains(&month) && (1..=31).contains(&day) && hour < 24 && minute < 60 && second < 61,
        "a field out of range"
    );
    let mut rest = &text[19..];
    let mut nanos = 0u32;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits: String = fraction.chars().take_while(char::is_ascii_digit).collect();
        ensure!(!digits.is_empty(), "an empty fraction");
        let padded = format!("{digits:0<9}");
        nanos = padded[..9].parse()?;
        rest = &fraction[digits.len()..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first() {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => bail!("no zone"),
            };
            ensure!(rest.len() == 6 && rest.as_bytes()[3] == b':', "a malformed offset");
            let zone = text.len() - 6;
            sign * (number(zone + 1, zone + 3)? * 3600 + number(zone + 4, zone + 6)? * 60)
        }
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    ensure!(seconds >= 0, "before 1970");
    Ok(UNIX_EPOCH + Duration::new(seconds as u64, nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let shifted_month = (month + 9) % 12;
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian date of a day since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// An HTTP date (RFC 9110 IMF-fixdate) such as `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(at: SystemTime) -> String {
    let seconds = at.duration_since(UNIX_EPOCH).expect("after 1970").as_secs() as i64;
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[(days + 4).rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// How long after `earlier` the instant `later` is (negative durations are an error).
pub fn between(earlier: SystemTime, later: SystemTime) -> Result<Duration> {
    later
        .duration_since(earlier)
        .map_err(|_| anyhow!("{later:?} is before {earlier:?}"))
}
