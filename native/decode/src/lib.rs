//! The decode fast path (issue 4): raw event messages (JSON bytes) to finished
//! `TouchpointEvent` instances, or "not sure".
//!
//! A hand-written parser for the one event shape (`processors/events.py`): a JSON object with
//! the model's keys, each at most once, keys and enum-like strings without escapes (values:
//! escapes decoded, surrogate escapes not sure), numbers in plain JSON form,
//! `occurred_at` as epoch milliseconds in pydantic-core's own millisecond range or as an
//! RFC 3339 timestamp (`YYYY-MM-DDTHH:MM:SS[.f{1,6}](Z|±HH:MM)`). Where every rule of the model
//! holds, it builds the instance as pydantic-core does (`__dict__` with every field in the
//! model's order, `__pydantic_fields_set__`, `__pydantic_extra__` and `__pydantic_private__`
//! None, a pydantic-core `TzInfo`, `Identities` for the identifiers), with the model's `ts_ms`
//! already cached after the fields where it is exact (what the first read of `ts_ms` would put
//! there). Equal immutable values are shared where pydantic-core makes one each: one `TzInfo`
//! per UTC offset, one fields set per combination of fields (never changed in place: the
//! model is frozen, `model_copy` copies it), interned touchpoints and property keys.
//! Anything else, valid or not, is "not sure" (None): the caller's Python path decides it,
//! so rejections and their reasons stay pydantic's. The decisions must be the model's exactly:
//! `tests/unit/test_decode_native.py` compares them on generated messages.

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyBytes, PyDateTime, PyDict, PyFloat, PyList, PySet, PyString, PyTuple, PyType,
    PyTzInfo,
};
use std::borrow::Cow;
use std::collections::HashMap;

// Field numbers: the model's field order (checked by the Python side, which passes the names).
const EVENT_ID: usize = 0;
const OCCURRED_AT: usize = 1;
const CHANNEL: usize = 2;
const TOUCHPOINT: usize = 3;
const IDENTITIES: usize = 4;
const SESSION_ID: usize = 5;
const REVENUE: usize = 6;
const TEXT: usize = 7;
const PROPERTIES: usize = 8;
const SCHEMA_VERSION: usize = 9;
const N_FIELDS: usize = 10;
const FIELD_NAMES: [&[u8]; N_FIELDS] = [
    b"event_id",
    b"occurred_at",
    b"channel",
    b"touchpoint",
    b"identities",
    b"session_id",
    b"revenue",
    b"text",
    b"properties",
    b"schema_version",
];
const REQUIRED: u32 =
    (1 << EVENT_ID) | (1 << OCCURRED_AT) | (1 << CHANNEL) | (1 << TOUCHPOINT) | (1 << IDENTITIES);

const IDENTITY_KINDS: [&[u8]; 5] = [
    b"anonymous_id",
    b"device_id",
    b"user_id",
    b"email",
    b"crm_id",
];
const CHANNELS: [&[u8]; 8] = [
    b"web", b"app", b"email", b"support", b"sales", b"social", b"ads", b"other",
];

// pydantic-core reads integers above 2e10 as milliseconds; below 2**33 s the datetime is exact
// (`processors.events._NATIVE_EPOCH_MS`, exclusive bounds).
const EPOCH_MS_LOW: u64 = 20_000_000_000;
const EPOCH_MS_HIGH: u64 = (1u64 << 33) * 1000;
// Interned touchpoints and property keys at most (then new ones are plain strings).
const MAX_INTERNED: usize = 4096;

/// "Not sure": the Python path decides.
struct Unsure;

type R<T> = Result<T, Unsure>;

struct Limits {
    id_chars: usize,
    identifier_chars: usize,
    text_chars: usize,
    properties: usize,
    key_chars: usize,
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    #[inline]
    fn ws(&mut self) {
        while self.i < self.b.len() {
            match self.b[self.i] {
                b' ' | b'\t' | b'\n' | b'\r' => self.i += 1,
                _ => break,
            }
        }
    }

    #[inline]
    fn peek(&mut self) -> R<u8> {
        self.ws();
        if self.i < self.b.len() {
            Ok(self.b[self.i])
        } else {
            Err(Unsure)
        }
    }

    #[inline]
    fn expect(&mut self, c: u8) -> R<()> {
        if self.peek()? == c {
            self.i += 1;
            Ok(())
        } else {
            Err(Unsure)
        }
    }

    /// A string's bytes (between the quotes): no escapes, no control characters, valid UTF-8.
    #[inline]
    fn string(&mut self) -> R<&'a str> {
        self.expect(b'"')?;
        let start = self.i;
        let b = self.b;
        // plain ASCII, 8 bytes at a time, up to the first byte that is not (see `special`)
        let mut i = start;
        while i + 8 <= b.len() {
            let word = u64::from_le_bytes(<[u8; 8]>::try_from(&b[i..i + 8]).unwrap());
            let found = special(word);
            if found != 0 {
                i += (found.trailing_zeros() / 8) as usize;
                break;
            }
            i += 8;
        }
        let mut ascii = true;
        while i < b.len() {
            let c = b[i];
            if c == b'"' {
                let raw = &b[start..i];
                self.i = i + 1;
                if ascii {
                    // (checked: every byte < 0x80)
                    return Ok(unsafe { std::str::from_utf8_unchecked(raw) });
                }
                return std::str::from_utf8(raw).map_err(|_| Unsure);
            }
            if c == b'\\' || c < 0x20 {
                return Err(Unsure);
            }
            if c >= 0x80 {
                ascii = false;
            }
            i += 1;
        }
        Err(Unsure)
    }

    /// Whether the next token is the key of field `field` (then read), as `string` reads it.
    #[inline]
    fn key(&mut self, field: usize) -> bool {
        self.ws();
        let name = match FIELD_NAMES.get(field) {
            Some(name) => *name,
            None => return false,
        };
        let (b, i, end) = (self.b, self.i, self.i + 1 + name.len());
        if end < b.len() && b[i] == b'"' && &b[i + 1..end] == name && b[end] == b'"' {
            self.i = end + 1;
            return true;
        }
        false
    }

    /// A string value (event id, identifier, session id, text, property value): as `string`,
    /// with its escapes decoded (`\"`, `\\`, `\/`, `\b`, `\f`, `\n`, `\r`, `\t`, `\uXXXX`
    /// outside the surrogates; a surrogate escape is not sure). Keys, channels, touchpoints
    /// and timestamps are read by `string`: an escape there is not sure.
    fn string_value(&mut self) -> R<Cow<'a, str>> {
        let start = self.i;
        match self.string() {
            Ok(s) => return Ok(Cow::Borrowed(s)),
            Err(Unsure) => self.i = start,
        }
        self.expect(b'"')?;
        let b = self.b;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let run = self.i;
            while self.i < b.len() && b[self.i] != b'"' && b[self.i] != b'\\' && b[self.i] >= 0x20 {
                self.i += 1;
            }
            out.extend_from_slice(&b[run..self.i]);
            if self.i >= b.len() || b[self.i] < 0x20 {
                return Err(Unsure);
            }
            if b[self.i] == b'"' {
                self.i += 1;
                return String::from_utf8(out).map(Cow::Owned).map_err(|_| Unsure);
            }
            // a backslash
            if self.i + 1 >= b.len() {
                return Err(Unsure);
            }
            let simple = match b[self.i + 1] {
                b'"' => Some(b'"'),
                b'\\' => Some(b'\\'),
                b'/' => Some(b'/'),
                b'b' => Some(0x08),
                b'f' => Some(0x0c),
                b'n' => Some(b'\n'),
                b'r' => Some(b'\r'),
                b't' => Some(b'\t'),
                b'u' => None,
                _ => return Err(Unsure),
            };
            if let Some(c) = simple {
                out.push(c);
                self.i += 2;
                continue;
            }
            if self.i + 6 > b.len() {
                return Err(Unsure);
            }
            let mut code = 0u32;
            for &h in &b[self.i + 2..self.i + 6] {
                let d = (h as char).to_digit(16).ok_or(Unsure)?;
                code = code * 16 + d;
            }
            if (0xD800..=0xDFFF).contains(&code) {
                return Err(Unsure);
            }
            let ch = char::from_u32(code).ok_or(Unsure)?;
            let mut buf = [0u8; 4];
            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
            self.i += 6;
        }
    }

    /// A number token, and whether it is an integer (no fraction, no exponent).
    fn number(&mut self) -> R<(&'a str, bool)> {
        self.ws();
        let b = self.b;
        let start = self.i;
        let sign = usize::from(start < b.len() && b[start] == b'-');
        let digits = start + sign;
        let mut i = digits_end(b, digits);
        if i == digits || (b[digits] == b'0' && i - digits > 1) {
            return Err(Unsure);
        }
        let mut integer = true;
        if i < b.len() && b[i] == b'.' {
            integer = false;
            let end = digits_end(b, i + 1);
            if end == i + 1 {
                return Err(Unsure);
            }
            i = end;
        }
        if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
            integer = false;
            i += 1;
            if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
                i += 1;
            }
            let end = digits_end(b, i);
            if end == i {
                return Err(Unsure);
            }
            i = end;
        }
        // the token must end here (a letter or another number glued on is not JSON)
        if !token_ends(b, i) {
            return Err(Unsure);
        }
        self.i = i;
        Ok((
            unsafe { std::str::from_utf8_unchecked(&b[start..i]) },
            integer,
        ))
    }

    /// After an object's member: true at a comma (another member follows), false at the
    /// closing brace (both consumed).
    fn more(&mut self) -> R<bool> {
        let c = self.peek()?;
        self.i += 1;
        match c {
            b',' => Ok(true),
            b'}' => Ok(false),
            _ => Err(Unsure),
        }
    }

    /// `null`, or a string of `min` to `max` code points.
    fn nullable_str(&mut self, min: usize, max: usize) -> R<Option<Cow<'a, str>>> {
        if self.literal(b"null") {
            Ok(None)
        } else {
            Ok(Some(bounded(self.string_value()?, min, max)?))
        }
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        self.ws();
        let end = self.i + word.len();
        if self.b[self.i..].starts_with(word) && token_ends(self.b, end) {
            self.i = end;
            return true;
        }
        false
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The bytes of `word` (8 bytes of a string, the first the lowest) that end a plain ASCII run
/// in a JSON string: a quote, a backslash, a control character or a byte of 0x80 and above, as
/// the high bit of each. Only the lowest one is exact (a borrow may mark bytes above it), and
/// it is all `Cursor::string` reads.
#[inline]
fn special(word: u64) -> u64 {
    let quote = word ^ (ONES * b'"' as u64);
    let backslash = word ^ (ONES * b'\\' as u64);
    let zero = |x: u64| x.wrapping_sub(ONES) & !x;
    (zero(quote) | zero(backslash) | (word.wrapping_sub(ONES * 0x20) & !word) | word) & HIGHS
}

/// The end of the run of ASCII digits from `i`.
fn digits_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    i
}

/// Whether a number or literal ending at `i` ends there (the end, a separator or whitespace).
fn token_ends(b: &[u8], i: usize) -> bool {
    i == b.len() || matches!(b[i], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
}

#[inline]
fn chars(s: &str) -> usize {
    s.bytes().filter(|&c| (c & 0xC0) != 0x80).count()
}

/// A short integer (at most 18 digits: no big numbers here).
fn small_int(token: &str) -> R<i64> {
    let digits = token.trim_start_matches('-').len();
    if digits > 18 {
        return Err(Unsure);
    }
    token.parse::<i64>().map_err(|_| Unsure)
}

/// A float token as pydantic-core reads it (correctly rounded); finite only.
fn finite_float(token: &str) -> R<f64> {
    let v = token.parse::<f64>().map_err(|_| Unsure)?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(Unsure)
    }
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 {
                29
            } else {
                28
            }
        }
    }
}

/// (year, month, day) of a count of days since 1970-01-01 (H. Hinnant's civil_from_days).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Days since 1970-01-01 of a (proleptic Gregorian) date (H. Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Epoch microseconds a float holds exactly: below this, `us / 1e6 * 1000` is Python's own
/// arithmetic for `int(at.timestamp() * 1000)` step for step (processors/events.py).
const EXACT_US: i64 = 1 << 53;

/// A datetime's fields and its UTC offset in seconds.
#[derive(Default)]
struct Moment {
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
    micro: i64,
    offset_s: i32,
}

impl Moment {
    /// The event's `ts_ms` (`TouchpointEvent.ts_ms`: `int(occurred_at.timestamp() * 1000)`),
    /// where a float holds its epoch microseconds exactly (years ~1685-2255); else None (the
    /// model computes it on first read, as for any event).
    fn ts_ms(&self) -> Option<i64> {
        let days = days_from_civil(self.year, self.month, self.day);
        let s = days * 86_400 + self.hour * 3600 + self.minute * 60 + self.second
            - self.offset_s as i64;
        let us = s * 1_000_000 + self.micro;
        if us.abs() >= EXACT_US {
            return None;
        }
        // Python: timestamp() is the exact microseconds over 1e6 (correctly rounded, as this
        // f64 division of two exact values is), times 1000, truncated toward zero by int()
        Some((us as f64 / 1e6 * 1000.0) as i64)
    }
}

fn two(b: &[u8], i: usize) -> R<i64> {
    let (x, y) = (b[i], b[i + 1]);
    if x.is_ascii_digit() && y.is_ascii_digit() {
        Ok(((x - b'0') * 10 + (y - b'0')) as i64)
    } else {
        Err(Unsure)
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,6}](Z|±HH:MM)`, a real date and time; anything else is not sure.
fn rfc3339(s: &str) -> R<Moment> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(Unsure);
    }
    let year = two(b, 0)? * 100 + two(b, 2)?;
    let (month, day) = (two(b, 5)?, two(b, 8)?);
    let (hour, minute, second) = (two(b, 11)?, two(b, 14)?, two(b, 17)?);
    if year < 1
        || !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return Err(Unsure);
    }
    let mut i = 19;
    let mut micro = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let n = i - start;
        if n == 0 || n > 6 {
            return Err(Unsure);
        }
        for &c in &b[start..i] {
            micro = micro * 10 + (c - b'0') as i64;
        }
        for _ in n..6 {
            micro *= 10;
        }
    }
    let offset_s = if i + 1 == b.len() && b[i] == b'Z' {
        0
    } else if i + 6 == b.len() && (b[i] == b'+' || b[i] == b'-') && b[i + 3] == b':' {
        let (h, m) = (two(b, i + 1)?, two(b, i + 4)?);
        if h > 23 || m > 59 {
            return Err(Unsure);
        }
        let s = (h * 3600 + m * 60) as i32;
        if b[i] == b'-' {
            -s
        } else {
            s
        }
    } else {
        return Err(Unsure);
    };
    Ok(Moment {
        year,
        month,
        day,
        hour,
        minute,
        second,
        micro,
        offset_s,
    })
}

fn epoch_ms(ms: u64) -> Moment {
    let ms = ms as i64;
    let (days, rest) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (year, month, day) = civil_from_days(days);
    Moment {
        year,
        month,
        day,
        hour: rest / 3_600_000,
        minute: rest / 60_000 % 60,
        second: rest / 1000 % 60,
        micro: rest % 1000 * 1000,
        offset_s: 0,
    }
}

/// What a message holds, before any Python object is made.
#[derive(Default)]
struct Parsed<'a> {
    seen: u32,
    event_id: Cow<'a, str>,
    occurred_at: Option<Moment>,
    channel: usize,
    touchpoint: &'a str,
    // (kind, identifier), the first `n_identities` (each kind at most once)
    identities: [(usize, Cow<'a, str>); 5],
    n_identities: usize,
    session_id: Option<Cow<'a, str>>,
    revenue: Option<f64>,
    text: Option<Cow<'a, str>>,
    properties: Option<Vec<(&'a str, Value<'a>)>>,
}

enum Value<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
}

fn touchpoint_ok(s: &str) -> bool {
    // ^[a-z][a-z0-9_]{0,63}$
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_lowercase()
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
}

fn bounded<S: AsRef<str>>(s: S, min: usize, max: usize) -> R<S> {
    let n_bytes = s.as_ref().len();
    // byte length bounds the code points: count only when it matters
    if n_bytes >= min && n_bytes <= max {
        return Ok(s);
    }
    let n = chars(s.as_ref());
    if n >= min && n <= max {
        Ok(s)
    } else {
        Err(Unsure)
    }
}

fn parse<'a>(raw: &'a [u8], lim: &Limits) -> R<Parsed<'a>> {
    let mut c = Cursor { b: raw, i: 0 };
    let mut p = Parsed::default();
    let mut next = 0;
    c.expect(b'{')?;
    if c.peek()? == b'}' {
        return Err(Unsure);
    }
    loop {
        // (the keys usually come in the model's order: the one after the last is tried first,
        // in place)
        let field = if c.key(next) {
            next
        } else {
            let key = c.string()?.as_bytes();
            FIELD_NAMES.iter().position(|&f| f == key).ok_or(Unsure)?
        };
        c.expect(b':')?;
        next = field + 1;
        if p.seen & (1 << field) != 0 {
            return Err(Unsure); // duplicate key
        }
        p.seen |= 1 << field;
        match field {
            EVENT_ID => p.event_id = bounded(c.string_value()?, 1, lim.id_chars)?,
            OCCURRED_AT => {
                p.occurred_at = Some(if c.peek()? == b'"' {
                    rfc3339(c.string()?)?
                } else {
                    let (token, integer) = c.number()?;
                    if !integer || token.len() > 19 || token.starts_with('-') {
                        return Err(Unsure);
                    }
                    let ms = token.parse::<u64>().map_err(|_| Unsure)?;
                    if ms <= EPOCH_MS_LOW || ms >= EPOCH_MS_HIGH {
                        return Err(Unsure);
                    }
                    epoch_ms(ms)
                })
            }
            CHANNEL => {
                let s = c.string()?.as_bytes();
                p.channel = CHANNELS.iter().position(|&ch| ch == s).ok_or(Unsure)?;
            }
            TOUCHPOINT => {
                let s = c.string()?;
                if !touchpoint_ok(s) {
                    return Err(Unsure);
                }
                p.touchpoint = s;
            }
            IDENTITIES => {
                c.expect(b'{')?;
                if c.peek()? == b'}' {
                    return Err(Unsure);
                }
                let mut kinds = 0u32;
                loop {
                    let k = c.string()?.as_bytes();
                    c.expect(b':')?;
                    let kind = IDENTITY_KINDS.iter().position(|&x| x == k).ok_or(Unsure)?;
                    if kinds & (1 << kind) != 0 {
                        return Err(Unsure);
                    }
                    kinds |= 1 << kind;
                    let v = bounded(c.string_value()?, 1, lim.identifier_chars)?;
                    p.identities[p.n_identities] = (kind, v);
                    p.n_identities += 1;
                    if !c.more()? {
                        break;
                    }
                }
            }
            SESSION_ID => p.session_id = c.nullable_str(1, lim.id_chars)?,
            REVENUE => {
                p.revenue = if c.literal(b"null") {
                    None
                } else {
                    let (token, integer) = c.number()?;
                    let v = if integer {
                        let n = small_int(token)?;
                        if n.unsigned_abs() > (1u64 << 53) {
                            return Err(Unsure);
                        }
                        n as f64
                    } else {
                        finite_float(token)?
                    };
                    // (-0.0 is not below 0: the model takes it, as -0.0)
                    if v < 0.0 {
                        return Err(Unsure);
                    }
                    Some(v)
                }
            }
            TEXT => p.text = c.nullable_str(0, lim.text_chars)?,
            PROPERTIES => {
                p.properties = if c.literal(b"null") {
                    None
                } else {
                    let mut props: Vec<(&str, Value)> = Vec::new();
                    c.expect(b'{')?;
                    if c.peek()? == b'}' {
                        c.i += 1;
                    } else {
                        loop {
                            let k = bounded(c.string()?, 0, lim.key_chars)?;
                            if props.iter().any(|(x, _)| *x == k) {
                                return Err(Unsure);
                            }
                            c.expect(b':')?;
                            let v = match c.peek()? {
                                b'"' => Value::Str(c.string_value()?),
                                b't' if c.literal(b"true") => Value::Bool(true),
                                b'f' if c.literal(b"false") => Value::Bool(false),
                                b'n' if c.literal(b"null") => Value::Null,
                                _ => {
                                    let (token, integer) = c.number()?;
                                    if integer {
                                        Value::Int(small_int(token)?)
                                    } else {
                                        Value::Float(finite_float(token)?)
                                    }
                                }
                            };
                            props.push((k, v));
                            if props.len() > lim.properties {
                                return Err(Unsure);
                            }
                            if !c.more()? {
                                break;
                            }
                        }
                    }
                    Some(props)
                }
            }
            SCHEMA_VERSION => {
                let (token, _) = c.number()?;
                if token != "1" {
                    return Err(Unsure);
                }
            }
            _ => return Err(Unsure),
        }
        if !c.more()? {
            break;
        }
    }
    c.ws();
    if c.i != raw.len() || p.seen & REQUIRED != REQUIRED {
        return Err(Unsure);
    }
    Ok(p)
}

/// Builds `TouchpointEvent`s from raw messages; None for each message it is not sure of.
#[pyclass(module = "journeymap_decode")]
struct Decoder {
    event_cls: Py<PyType>,
    identities_cls: Py<PyType>,
    tzinfo_cls: Py<PyType>,
    template: Py<PyDict>,
    // the template with a last `ts_ms` entry: sized for it, so filling it in resizes nothing
    template_ts: Py<PyDict>,
    n_ts_ms: Py<PyString>,
    fields: Vec<Py<PyString>>,
    // copies of the templates are laid out as `str_entries` reads them, each field at its
    // position (then `ts_ms`): values are put in place, with no lookup
    direct: bool,
    channels: Vec<Py<PyString>>,
    kinds: Vec<Py<PyString>>,
    n_fields_set: Py<PyString>,
    n_extra: Py<PyString>,
    n_private: Py<PyString>,
    // where the model's three object slots (fields set, extra, private) sit in an instance,
    // when they are plain `__slots__` members (else they are set by name)
    slots: Option<[isize; 3]>,
    limits: Limits,
    touchpoints: Interned,
    keys: Interned,
    // the fields sets, by the bits of the fields seen (1 << N_FIELDS places)
    sets: Vec<Option<Py<PySet>>>,
    // one `TzInfo` per UTC offset (seconds), made on first use and shared by every datetime
    // with that offset: it is immutable, and equal to a fresh one in every way but identity
    tzs: HashMap<i32, Py<PyTzInfo>>,
    utc: Option<Py<PyTzInfo>>,
}

/// Interned strings: a map (SipHash: the strings come from producers) with a small
/// direct-mapped table of recent ones in front, placed by a cheap mix of the length and the
/// first and last 8 bytes. A string that misses there (a new one, or another one in its
/// place) is looked up in the map, so a crafted run of colliding strings costs map lookups,
/// nothing more.
#[derive(Default)]
struct Interned {
    map: HashMap<String, Py<PyString>>,
    recent: Vec<Option<(String, Py<PyString>)>>,
}

const RECENT: usize = 256;

/// The place of `s` in `Interned::recent`.
fn recent_place(s: &[u8]) -> usize {
    let word = |b: &[u8]| {
        let mut w = [0u8; 8];
        w[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(w)
    };
    let n = s.len();
    let (head, tail) = (word(&s[..n.min(8)]), word(&s[n - n.min(8)..]));
    let mixed = (head ^ tail.rotate_left(29) ^ n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (mixed >> 56) as usize % RECENT
}

/// The header of CPython's dict keys object (3.11, 3.12), the indices then the entries after it
/// (the journeys crate reads the same header: each crate is built apart).
#[repr(C)]
struct DictKeys {
    refcnt: ffi::Py_ssize_t,
    log2_size: u8,
    log2_index_bytes: u8,
    kind: u8, // 0 general, 1 str keys, 2 split
    version: u32,
    usable: ffi::Py_ssize_t,
    nentries: ffi::Py_ssize_t,
}

/// The entries (key, value) of `d`'s table and their number, where it is a combined table of
/// str keys (CPython 3.11, 3.12 layout; the caller checks the version), else None.
///
/// # Safety
/// `d` is a live exact dict; the GIL is held.
unsafe fn str_entries(d: *mut ffi::PyObject) -> Option<(*mut [*mut ffi::PyObject; 2], usize)> {
    let d = d as *mut ffi::PyDictObject;
    if !(*d).ma_values.is_null() {
        return None;
    }
    let keys = (*d).ma_keys as *const DictKeys;
    if (*keys).kind != 1 {
        return None;
    }
    let entries = (keys as *const u8)
        .add(std::mem::size_of::<DictKeys>())
        .add(1usize << (*keys).log2_index_bytes) as *mut [*mut ffi::PyObject; 2];
    Some((entries, (*keys).nentries as usize))
}

/// An instance of `cls` without `__init__` (as `object.__new__(cls)`).
fn new_instance<'py>(py: Python<'py>, cls: &Bound<'py, PyType>) -> PyResult<Bound<'py, PyAny>> {
    unsafe {
        let t = cls.as_ptr() as *mut ffi::PyTypeObject;
        let alloc = (*t).tp_alloc.unwrap_or(ffi::PyType_GenericAlloc);
        Bound::from_owned_ptr_or_err(py, alloc(t, 0))
    }
}

/// Where the writable object slot (a `__slots__` member) `name` of `cls` sits in its
/// instances, in bytes from the start; None for anything else.
fn slot_offset(cls: &Bound<'_, PyType>, name: &Bound<'_, PyString>) -> Option<isize> {
    let descr = cls.getattr(name).ok()?;
    unsafe {
        if ffi::Py_TYPE(descr.as_ptr()) != std::ptr::addr_of_mut!(ffi::PyMemberDescr_Type) {
            return None;
        }
        // (pyo3-ffi 0.22 types `d_member` as a PyGetSetDef: it is CPython's PyMemberDef)
        let def = (*(descr.as_ptr() as *mut ffi::PyMemberDescrObject)).d_member
            as *const ffi::PyMemberDef;
        let size = (*(cls.as_ptr() as *mut ffi::PyTypeObject)).tp_basicsize;
        let offset = (*def).offset;
        let word = std::mem::size_of::<*mut ffi::PyObject>() as isize;
        if (*def).type_code != ffi::Py_T_OBJECT_EX
            || (*def).flags & ffi::Py_READONLY != 0
            || offset < word
            || offset + word > size
        {
            return None;
        }
        Some(offset)
    }
}

/// Set the object slot at `offset` (from `slot_offset`) of `obj` to `value`, as
/// `object.__setattr__` does for a `__slots__` member, without looking the member up.
fn put_slot(obj: &Bound<'_, PyAny>, offset: isize, value: &Bound<'_, PyAny>) {
    unsafe {
        let at = (obj.as_ptr() as *mut u8).offset(offset) as *mut *mut ffi::PyObject;
        ffi::Py_INCREF(value.as_ptr());
        let old = std::ptr::replace(at, value.as_ptr());
        ffi::Py_XDECREF(old);
    }
}

/// `object.__setattr__(obj, name, value)`: past a frozen class's own `__setattr__`.
fn set_slot(
    obj: &Bound<'_, PyAny>,
    name: &Bound<'_, PyString>,
    value: &Bound<'_, PyAny>,
) -> PyResult<()> {
    if unsafe { ffi::PyObject_GenericSetAttr(obj.as_ptr(), name.as_ptr(), value.as_ptr()) } != 0 {
        return Err(PyErr::fetch(obj.py()));
    }
    Ok(())
}

/// A `str` of `s`: when it is ASCII and two characters or more, made as
/// `PyUnicode_FromStringAndSize` makes it (a compact ASCII string, the same object but for
/// its address) without decoding the bytes as UTF-8 first; otherwise by that call.
fn py_str<'py>(py: Python<'py>, s: &str) -> PyResult<Bound<'py, PyString>> {
    if s.len() < 2 || !s.is_ascii() {
        // (the empty and one-character strings are the interpreter's shared ones)
        return Ok(PyString::new_bound(py, s));
    }
    unsafe {
        let obj = ffi::PyUnicode_New(s.len() as ffi::Py_ssize_t, 127);
        if obj.is_null() {
            return Err(PyErr::fetch(py));
        }
        std::ptr::copy_nonoverlapping(s.as_ptr(), ffi::PyUnicode_DATA(obj) as *mut u8, s.len());
        Ok(Bound::from_owned_ptr(py, obj).downcast_into_unchecked())
    }
}

fn interned<'py>(py: Python<'py>, cache: &mut Interned, s: &str) -> Bound<'py, PyString> {
    if cache.recent.is_empty() {
        cache.recent = (0..RECENT).map(|_| None).collect();
    }
    let place = recent_place(s.as_bytes());
    if let Some((k, v)) = &cache.recent[place] {
        if k == s {
            return v.bind(py).clone();
        }
    }
    let v = match cache.map.get(s) {
        Some(v) => v.bind(py).clone(),
        None => {
            let v = PyString::new_bound(py, s);
            if cache.map.len() >= MAX_INTERNED {
                return v; // (not interned: not kept among the recent ones either)
            }
            cache.map.insert(s.to_owned(), v.clone().unbind());
            v
        }
    };
    cache.recent[place] = Some((s.to_owned(), v.clone().unbind()));
    v
}

impl Decoder {
    /// One entry per item of `items` (a message's bytes, or with `pairs` a tuple whose first
    /// item is): the event, or None where the model must decide; and the positions of those
    /// Nones. `wrap`: each event in an instance of the class, with its source (see
    /// `accept_many`). The list is made at its full length at once (no growing).
    fn many<'py>(
        &mut self,
        py: Python<'py>,
        items: Bound<'py, PyList>,
        pairs: bool,
        wrap: Option<(Bound<'py, PyList>, Bound<'py, PyType>)>,
    ) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
        let mut out: Vec<PyObject> = Vec::with_capacity(items.len());
        let mut unsure: Vec<usize> = Vec::new();
        let (n_event, n_source) = (intern!(py, "event"), intern!(py, "source"));
        for (i, item) in items.iter().enumerate() {
            // (a pair is a tuple of two: anything else is not sure, as anything but bytes)
            let raw = if !pairs {
                Some(item)
            } else {
                match item.downcast::<PyTuple>() {
                    Ok(t) if t.len() == 2 => Some(t.get_item(0)?),
                    _ => None,
                }
            };
            let parsed = match raw.as_ref().map(|r| r.downcast::<PyBytes>()) {
                Some(Ok(bytes)) => parse(bytes.as_bytes(), &self.limits),
                _ => Err(Unsure),
            };
            let event = match parsed {
                Ok(p) => self.build(py, p)?,
                Err(Unsure) => {
                    out.push(py.None());
                    unsure.push(i);
                    continue;
                }
            };
            match &wrap {
                None => out.push(event.unbind()),
                Some((sources, cls)) => {
                    let source = sources.get_item(i)?;
                    let one = new_instance(py, cls)?;
                    set_slot(&one, n_event, &event)?;
                    set_slot(&one, n_source, &source)?;
                    out.push(one.unbind());
                }
            }
        }
        Ok((PyList::new_bound(py, out), PyList::new_bound(py, unsure)))
    }

    /// The fields set for the fields seen (a bit per field): one set per combination, made
    /// once and shared by every event with those fields (pydantic never changes a model's
    /// fields set in place: `model_copy` copies it first, and the model is frozen).
    fn fields_set<'py>(&mut self, py: Python<'py>, seen: u32) -> PyResult<Bound<'py, PySet>> {
        if let Some(set) = &self.sets[seen as usize] {
            return Ok(set.bind(py).clone());
        }
        let names: Vec<&Py<PyString>> = (0..N_FIELDS)
            .filter(|i| seen & (1 << i) != 0)
            .map(|i| &self.fields[i])
            .collect();
        let set = PySet::new_bound(py, &names)?;
        self.sets[seen as usize] = Some(set.clone().unbind());
        Ok(set)
    }

    /// The `TzInfo` of a UTC offset (seconds): one per offset, up to MAX_INTERNED of them.
    fn tz<'py>(&mut self, py: Python<'py>, offset_s: i32) -> PyResult<Bound<'py, PyTzInfo>> {
        if offset_s == 0 {
            if let Some(tz) = &self.utc {
                return Ok(tz.bind(py).clone());
            }
        } else if let Some(tz) = self.tzs.get(&offset_s) {
            return Ok(tz.bind(py).clone());
        }
        let tz = self
            .tzinfo_cls
            .bind(py)
            .call1((offset_s,))?
            .downcast_into::<PyTzInfo>()?;
        if offset_s == 0 {
            self.utc = Some(tz.clone().unbind());
        } else if self.tzs.len() < MAX_INTERNED {
            self.tzs.insert(offset_s, tz.clone().unbind());
        }
        Ok(tz)
    }

    fn build<'py>(&mut self, py: Python<'py>, p: Parsed<'_>) -> PyResult<Bound<'py, PyAny>> {
        // `ts_ms` cached at once where it is exact (the resolver and every processor read it;
        // computed on first read it grew the dict past its size)
        let ts_ms = p.occurred_at.as_ref().and_then(Moment::ts_ms);
        let d = match ts_ms {
            Some(_) => self.template_ts.bind(py).copy()?,
            None => self.template.bind(py).copy()?,
        };
        // the copy's entries, where the template's table is laid out as `str_entries` reads it
        // (checked in `new`): field i is entry i (then `ts_ms`), its value replaced in place
        let entries_of = |d: &Bound<'_, PyDict>| {
            if self.direct {
                unsafe { str_entries(d.as_ptr()) }.filter(|&(_, n)| n >= N_FIELDS)
            } else {
                None
            }
        };
        let mut entries = entries_of(&d);
        if let Some(ms) = ts_ms {
            match entries {
                Some((e, n)) if n == N_FIELDS + 1 => unsafe {
                    let v = ms.into_py(py).into_ptr();
                    let old = std::mem::replace(&mut (*e.add(N_FIELDS))[1], v);
                    ffi::Py_XDECREF(old);
                },
                _ => {
                    d.set_item(self.n_ts_ms.bind(py), ms)?;
                    entries = entries_of(&d); // (an insert may have moved the table)
                }
            }
        }
        let set = self.fields_set(py, p.seen)?;
        let m = p.occurred_at.unwrap_or_default();
        let tz = self.tz(py, m.offset_s)?;
        let f = &self.fields;
        let put = |i: usize, v: &Bound<'_, PyAny>| -> PyResult<()> {
            if let Some((e, _)) = entries {
                unsafe {
                    let e = &mut *e.add(i);
                    ffi::Py_INCREF(v.as_ptr());
                    let old = std::mem::replace(&mut e[1], v.as_ptr());
                    ffi::Py_XDECREF(old);
                }
                return Ok(());
            }
            if unsafe { ffi::PyDict_SetItem(d.as_ptr(), f[i].as_ptr(), v.as_ptr()) } != 0 {
                return Err(PyErr::fetch(py));
            }
            Ok(())
        };
        let none = py.None().into_bound(py);
        put(EVENT_ID, py_str(py, &p.event_id)?.as_any())?;
        let at = PyDateTime::new_bound(
            py,
            m.year as i32,
            m.month as u8,
            m.day as u8,
            m.hour as u8,
            m.minute as u8,
            m.second as u8,
            m.micro as u32,
            Some(&tz),
        )?;
        put(OCCURRED_AT, at.as_any())?;
        put(CHANNEL, self.channels[p.channel].bind(py).as_any())?;
        let tp = interned(py, &mut self.touchpoints, p.touchpoint);
        put(TOUCHPOINT, tp.as_any())?;
        let ids = unsafe {
            let cls = self.identities_cls.as_ptr() as *mut ffi::PyTypeObject;
            let empty = PyTuple::empty_bound(py);
            let new = (*std::ptr::addr_of!(ffi::PyDict_Type)).tp_new.unwrap();
            Bound::from_owned_ptr_or_err(py, new(cls, empty.as_ptr(), std::ptr::null_mut()))?
        };
        for (kind, value) in &p.identities[..p.n_identities] {
            let v = py_str(py, value.as_ref())?;
            if unsafe { ffi::PyDict_SetItem(ids.as_ptr(), self.kinds[*kind].as_ptr(), v.as_ptr()) }
                != 0
            {
                return Err(PyErr::fetch(py));
            }
        }
        put(IDENTITIES, &ids)?;
        if let Some(s) = p.session_id {
            put(SESSION_ID, py_str(py, &s)?.as_any())?;
        }
        if let Some(v) = p.revenue {
            put(REVENUE, PyFloat::new_bound(py, v).as_any())?;
        }
        if let Some(s) = p.text {
            put(TEXT, py_str(py, &s)?.as_any())?;
        }
        if let Some(props) = p.properties {
            let out = PyDict::new_bound(py);
            for (k, v) in props {
                let key = interned(py, &mut self.keys, k);
                let value: Bound<'_, PyAny> = match v {
                    Value::Str(s) => py_str(py, &s)?.into_any(),
                    Value::Int(n) => n.into_py(py).into_bound(py),
                    Value::Float(x) => PyFloat::new_bound(py, x).into_any(),
                    Value::Bool(b) => PyBool::new_bound(py, b).to_owned().into_any(),
                    Value::Null => none.clone(),
                };
                out.set_item(key, value)?;
            }
            put(PROPERTIES, out.as_any())?;
        }
        // (explicit nulls and schema_version 1 are the template's values already)
        let obj = new_instance(py, self.event_cls.bind(py))?;
        // (`obj.__dict__ = d` as the model's `__dict__` descriptor does it, not looked up)
        if unsafe {
            ffi::PyObject_GenericSetDict(obj.as_ptr(), d.as_ptr(), std::ptr::null_mut())
        } != 0
        {
            return Err(PyErr::fetch(py));
        }
        match self.slots {
            Some([fields_set, extra, private]) => {
                put_slot(&obj, fields_set, set.as_any());
                put_slot(&obj, extra, &none);
                put_slot(&obj, private, &none);
            }
            None => {
                set_slot(&obj, self.n_fields_set.bind(py), &set)?;
                set_slot(&obj, self.n_extra.bind(py), &none)?;
                set_slot(&obj, self.n_private.bind(py), &none)?;
            }
        }
        Ok(obj)
    }
}

#[pymethods]
impl Decoder {
    /// `event_cls`: the model; `identities_cls`: its `Identities` dict subclass; `tzinfo_cls`:
    /// pydantic-core's `TzInfo`; `template`: the model's `__dict__` of defaults, every field in
    /// order; `channels`, `kinds`: the strings to use for those values and keys (in the order
    /// of this module's tables); the limits of `processors.events`.
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        event_cls: Py<PyType>,
        identities_cls: Py<PyType>,
        tzinfo_cls: Py<PyType>,
        template: Bound<'_, PyDict>,
        channels: Vec<Py<PyString>>,
        kinds: Vec<Py<PyString>>,
        id_chars: usize,
        identifier_chars: usize,
        text_chars: usize,
        properties: usize,
        key_chars: usize,
    ) -> PyResult<Self> {
        let fields: Vec<Py<PyString>> = template
            .keys()
            .iter()
            .map(|k| k.downcast_into::<PyString>().map(|s| s.unbind()))
            .collect::<Result<_, _>>()?;
        let names: Vec<String> = fields.iter().map(|f| f.bind(py).to_string()).collect();
        let expected: Vec<String> = FIELD_NAMES
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        let same = |got: &[Py<PyString>], want: &[&[u8]]| {
            got.len() == want.len()
                && got
                    .iter()
                    .zip(want)
                    .all(|(g, w)| g.bind(py).to_string().as_bytes() == *w)
        };
        if names != expected || !same(&channels, &CHANNELS) || !same(&kinds, &IDENTITY_KINDS) {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "the event model's fields, channels or identity kinds are not the ones this \
                 decoder was written for",
            ));
        }
        let intern = |s: &str| PyString::intern_bound(py, s).unbind();
        let (n_fields_set, n_extra, n_private) = (
            intern("__pydantic_fields_set__"),
            intern("__pydantic_extra__"),
            intern("__pydantic_private__"),
        );
        let cls = event_cls.bind(py);
        let slots = match (
            slot_offset(cls, n_fields_set.bind(py)),
            slot_offset(cls, n_extra.bind(py)),
            slot_offset(cls, n_private.bind(py)),
        ) {
            (Some(a), Some(b), Some(c)) if a != b && b != c && a != c => Some([a, b, c]),
            _ => None,
        };
        let n_ts_ms = intern("ts_ms");
        let template_ts = template.copy()?;
        template_ts.set_item(n_ts_ms.bind(py), py.None())?;
        let direct = {
            let v = py.version_info();
            let laid_out = |d: &Bound<'_, PyDict>, names: &[&Py<PyString>]| -> PyResult<bool> {
                let copy = d.copy()?;
                Ok(match unsafe { str_entries(copy.as_ptr()) } {
                    Some((e, n)) => {
                        n == names.len()
                            && names
                                .iter()
                                .enumerate()
                                .all(|(i, k)| unsafe { (*e.add(i))[0] } == k.as_ptr())
                    }
                    None => false,
                })
            };
            let names: Vec<&Py<PyString>> = fields.iter().collect();
            let mut names_ts = names.clone();
            names_ts.push(&n_ts_ms);
            v.major == 3
                && (v.minor == 11 || v.minor == 12)
                && laid_out(&template, &names)?
                && laid_out(&template_ts, &names_ts)?
        };
        Ok(Decoder {
            event_cls,
            identities_cls,
            tzinfo_cls,
            template: template.unbind(),
            template_ts: template_ts.unbind(),
            n_ts_ms,
            fields,
            direct,
            channels,
            kinds,
            n_fields_set,
            n_extra,
            n_private,
            slots,
            limits: Limits {
                id_chars,
                identifier_chars,
                text_chars,
                properties,
                key_chars,
            },
            touchpoints: Interned::default(),
            keys: Interned::default(),
            sets: (0..1 << N_FIELDS).map(|_| None).collect(),
            tzs: HashMap::default(),
            utc: None,
        })
    }

    /// One entry per message: the event, or None where the model must decide; and the
    /// positions of those Nones. Anything but `bytes` is not sure.
    fn decode_many<'py>(
        &mut self,
        py: Python<'py>,
        raws: Bound<'py, PyList>,
    ) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
        self.many(py, raws, false, None)
    }

    /// As `decode_many`, for messages given as `(raw, source)` tuples (`raw` the first item of
    /// each; anything else is not sure, as is anything but bytes): the events of a batch of pairs without a list of
    /// their bytes made first.
    fn decode_pairs<'py>(
        &mut self,
        py: Python<'py>,
        messages: Bound<'py, PyList>,
    ) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
        self.many(py, messages, true, None)
    }

    /// As `decode_many`, each event wrapped with its source: `accepted_cls(event, source)`
    /// made as a frozen slots dataclass is (its two slots set, no `__init__`), None where the
    /// model must decide.
    fn accept_many<'py>(
        &mut self,
        py: Python<'py>,
        raws: Bound<'py, PyList>,
        sources: Bound<'py, PyList>,
        accepted_cls: Bound<'py, PyType>,
    ) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyList>)> {
        if sources.len() != raws.len() {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "one source per message",
            ));
        }
        self.many(py, raws, false, Some((sources, accepted_cls)))
    }

    /// The event, or None.
    fn decode(&mut self, py: Python<'_>, raw: Bound<'_, PyAny>) -> PyResult<PyObject> {
        let parsed = match raw.downcast::<PyBytes>() {
            Ok(bytes) => parse(bytes.as_bytes(), &self.limits),
            Err(_) => Err(Unsure),
        };
        match parsed {
            Ok(p) => Ok(self.build(py, p)?.unbind()),
            Err(Unsure) => Ok(py.None()),
        }
    }
}

#[pymodule]
fn journeymap_decode(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Decoder>()?;
    m.add(
        "SOURCE_HASH",
        option_env!("JOURNEYMAP_NATIVE_SOURCE_HASH").unwrap_or(""),
    )?;
    Ok(())
}
