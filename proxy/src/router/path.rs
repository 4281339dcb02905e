//! Request path normalization: the one canonical form routes are matched against, so that
//! `/x/../api`, `//api` or `/api%2F..` cannot slip past a route written for `/api`.

use std::borrow::Cow;

/// Normalizes a request path (no query) for matching and forwarding.
///
/// - `%2E`/`%2e` become `.` and `%2F`/`%2f` become `/`; every other escape (`%20`, `%5C`,
///   `%25`, ...) is left as it is, and decoding is done once (`%252e` stays `%252e`);
/// - repeated slashes merge (`//a///b` → `/a/b`);
/// - `.` and `..` segments are resolved as in RFC 3986 §5.2.4, and `..` above the root stays
///   at the root (`/api%2F..` → `/`, `/api/%2e%2e/admin` → `/admin`);
/// - a trailing slash survives, and a path ending in a `.` or `..` segment gets one, as in
///   RFC 3986 (`/a/b/..` → `/a/`);
/// - an empty path becomes `/`, and a path not starting with `/` gets one.
///
/// Already-normal paths (the common case) come back borrowed: one scan, no allocation. The
/// result is a fixed point: normalizing it again changes nothing.
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    if is_normalized(path) {
        return Cow::Borrowed(path);
    }
    let decoded = decode_dots_and_slashes(path);
    Cow::Owned(remove_dot_segments(&decoded))
}

/// True when `normalize_path` would return `path` unchanged. Deliberately exact rather than
/// a rough scan for `/.` or `%`, so `/.well-known/x` and `/a%20b` stay on the borrowed path.
fn is_normalized(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return false;
    }
    for (i, &b) in bytes.iter().enumerate() {
        let rest = &bytes[i + 1..];
        match b {
            b'%' if encoded_dot_or_slash(rest).is_some() => return false,
            b'/' => match rest {
                [b'/', ..] | [b'.'] | [b'.', b'/', ..] | [b'.', b'.'] | [b'.', b'.', b'/', ..] => {
                    return false;
                }
                _ => {}
            },
            _ => {}
        }
    }
    true
}

/// The character `%XY` stands for when `XY` (the bytes after the `%`) encodes `.` or `/`.
fn encoded_dot_or_slash(after_percent: &[u8]) -> Option<char> {
    match after_percent {
        [b'2', b'e' | b'E', ..] => Some('.'),
        [b'2', b'f' | b'F', ..] => Some('/'),
        _ => None,
    }
}

fn decode_dots_and_slashes(path: &str) -> Cow<'_, str> {
    if !path.contains('%') {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let escape = &rest[i..];
        match encoded_dot_or_slash(&escape.as_bytes()[1..]) {
            Some(c) => {
                out.push(c);
                // The three bytes `%2e` are ASCII, so this is a char boundary.
                rest = &escape[3..];
            }
            None => {
                out.push('%');
                rest = &escape[1..];
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// RFC 3986 dot-segment removal plus slash merging, on an already decoded path.
fn remove_dot_segments(path: &str) -> String {
    // Built without a trailing slash ("" is the root); `..` truncates to the previous '/'.
    let mut out = String::with_capacity(path.len() + 1);
    let mut trailing_slash = false;
    for segment in path.split('/') {
        trailing_slash = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                if let Some(i) = out.rfind('/') {
                    out.truncate(i);
                }
            }
            name => {
                out.push('/');
                out.push_str(name);
            }
        }
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &[(&str, &str)] = &[
        // Already normal.
        ("/", "/"),
        ("/api", "/api"),
        ("/api/", "/api/"),
        ("/a/b/c", "/a/b/c"),
        ("/.well-known/acme", "/.well-known/acme"),
        ("/a.b/c..d/...", "/a.b/c..d/..."),
        ("/a%20b", "/a%20b"),
        ("/a%5Cb", "/a%5Cb"),
        ("/a%25", "/a%25"),
        ("/a%", "/a%"),
        ("/a%2", "/a%2"),
        ("/a\\..\\b", "/a\\..\\b"),
        // Empty or relative.
        ("", "/"),
        ("api", "/api"),
        ("a/../b", "/b"),
        (".", "/"),
        ("..", "/"),
        // Repeated slashes.
        ("//", "/"),
        ("//a///b", "/a/b"),
        ("//api", "/api"),
        ("/a//", "/a/"),
        // Dot segments.
        ("/a/../b", "/b"),
        ("/x/../api", "/api"),
        ("/./a/./b/", "/a/b/"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/a/b/../", "/a/"),
        ("/a/./", "/a/"),
        ("/..", "/"),
        ("/../..", "/"),
        ("/../api", "/api"),
        ("/a/../../b", "/b"),
        ("/a/b/../../..", "/"),
        ("/a/.", "/a/"),
        ("/a/..", "/"),
        // Encoded dots and slashes: the bypass attempts.
        ("/api%2F..", "/"),
        ("/api%2f..", "/"),
        ("/api/%2e%2e/admin", "/admin"),
        ("/api/%2E%2E/admin", "/admin"),
        ("/api/%2e./admin", "/admin"),
        ("/api/.%2E/admin", "/admin"),
        ("/x%2F..%2Fapi", "/api"),
        ("/x%2f%2e%2e%2fapi", "/api"),
        ("%2Fapi", "/api"),
        ("/%2e/api", "/api"),
        ("/a%2fb", "/a/b"),
        ("/a%2F%2Fb", "/a/b"),
        ("/a%2Eb", "/a.b"),
        // Decoding happens once, and only for '.' and '/'.
        ("/a%252e%252e/b", "/a%252e%252e/b"),
        ("/a/%252e%252e/b", "/a/%252e%252e/b"),
        ("/a%20b/../c%20d", "/c%20d"),
        ("/a/%5C../b", "/a/%5C../b"),
        ("/%%2e2e/", "/%.2e/"),
    ];

    #[test]
    fn normalization_table() {
        for &(input, want) in TABLE {
            assert_eq!(normalize_path(input), want, "normalize_path({input:?})");
        }
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for &(input, want) in TABLE {
            let got = normalize_path(input);
            assert_eq!(
                matches!(got, Cow::Borrowed(_)),
                input == want,
                "{input:?} → {got:?}: borrowed exactly when unchanged"
            );
        }
    }

    #[test]
    fn normalizing_twice_changes_nothing() {
        for &(input, _) in TABLE {
            let once = normalize_path(input);
            let twice = normalize_path(&once);
            assert!(matches!(twice, Cow::Borrowed(_)), "{input:?} → {once:?}");
        }
    }

    /// The fast path must agree with the slow one: anything `is_normalized` waves through
    /// would come out of the full normalization unchanged.
    #[test]
    fn fast_path_agrees_with_full_normalization() {
        let atoms = ["/", "a", ".", "..", "%2e", "%2F", "%20", "%", "2e", "x.y"];
        let mut inputs = vec![String::new()];
        for _ in 0..4 {
            let mut next = Vec::new();
            for s in &inputs {
                for atom in atoms {
                    next.push(format!("{s}{atom}"));
                }
            }
            inputs.extend(next);
        }
        for input in &inputs {
            let full = remove_dot_segments(&decode_dots_and_slashes(input));
            assert_eq!(is_normalized(input), full == *input, "{input:?} → {full:?}");
            assert_eq!(normalize_path(input), full, "{input:?}");
            assert_eq!(
                normalize_path(&full),
                full,
                "{input:?} → {full:?} is a fixed point"
            );
        }
    }
}
