//! How two filters relate, for access rules: whether one covers everything the other
//! can match ([`covers`]), and whether they can match a common topic ([`overlaps`]).
//! Both take filter text without a `$share/{group}/` prefix and follow the matching
//! rules of [`TopicFilter::matches`](crate::TopicFilter::matches), `$` topics included.

/// Whether every topic `inner` matches is matched by `outer` too.
///
/// `a/#` covers `a/b/+`; `a/+` does not cover `a/#` (it misses `a/b/c`); `#` does
/// not cover `$SYS/#` (a leading wildcard never matches a `$` topic).
pub fn covers(outer: &str, inner: &str) -> bool {
    if starts_with_wildcard(outer) && inner.starts_with('$') {
        return false;
    }
    let mut outer_levels = outer.split('/');
    let mut inner_levels = inner.split('/');
    loop {
        match (outer_levels.next(), inner_levels.next()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            // "a/#" matches "a" too, which "a" alone covers only when inner ends here.
            (None, Some(_)) | (Some(_), None) => return false,
            (Some("+"), Some(i)) => {
                if i == "#" {
                    return false;
                }
            }
            (Some(o), Some(i)) => {
                if o != i {
                    return false;
                }
            }
        }
    }
}

/// Whether some topic is matched by both `a` and `b`.
pub fn overlaps(a: &str, b: &str) -> bool {
    // A topic starting with '$' escapes a leading wildcard; a literal first level of
    // the other filter decides whether such a topic is the only common ground.
    if starts_with_wildcard(a) && b.starts_with('$')
        || starts_with_wildcard(b) && a.starts_with('$')
    {
        return false;
    }
    let mut a_levels = a.split('/');
    let mut b_levels = b.split('/');
    loop {
        match (a_levels.next(), b_levels.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(x), Some(y)) => {
                if x != "+" && y != "+" && x != y {
                    return false;
                }
            }
        }
    }
}

fn starts_with_wildcard(filter: &str) -> bool {
    filter.starts_with(['+', '#'])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TopicFilter;
    use proptest::prelude::*;

    #[test]
    fn covering() {
        assert!(covers("a/#", "a/b/+"));
        assert!(covers("a/#", "a"));
        assert!(covers("a/#", "a/#"));
        assert!(covers("a/+", "a/b"));
        assert!(covers("a/+", "a/+"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/+", "a/b/c"));
        assert!(!covers("a/b", "a/+"));
        assert!(!covers("#", "$SYS/#"));
        assert!(covers("$SYS/#", "$SYS/broker/uptime"));
        assert!(covers("#", "anything/at/all"));
    }

    #[test]
    fn overlapping() {
        assert!(overlaps("a/#", "#"));
        assert!(overlaps("a/+/c", "a/b/+"));
        assert!(overlaps("a/b", "+/b"));
        assert!(!overlaps("a/b", "a/c"));
        assert!(!overlaps("a/b", "a/b/c"));
        assert!(overlaps("a/b/#", "a/b"));
        assert!(!overlaps("#", "$SYS/x"));
        assert!(!overlaps("secret/#", "public/#"));
    }

    /// Levels from a small alphabet, so that filters and topics meet often.
    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("$s".to_string()),
            Just(String::new())
        ]
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..4).prop_map(|l| l.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop_oneof![level(), Just("+".to_string())], 1..4),
            any::<bool>(),
        )
            .prop_map(|(mut levels, hash)| {
                if hash {
                    levels.push("#".to_string());
                }
                levels.join("/")
            })
    }

    proptest! {
        /// covers(o, i) and i matches t imply o matches t.
        #[test]
        fn covering_is_sound(o in filter(), i in filter(), t in topic()) {
            let (Ok(of), Ok(inf)) = (TopicFilter::parse(&o), TopicFilter::parse(&i)) else {
                return Ok(());
            };
            if covers(&o, &i) && inf.matches(&t) {
                prop_assert!(of.matches(&t), "{o} covers {i}, {i} matches {t}, {o} does not");
            }
        }

        /// A topic both match means the filters overlap.
        #[test]
        fn overlapping_is_complete(a in filter(), b in filter(), t in topic()) {
            let (Ok(af), Ok(bf)) = (TopicFilter::parse(&a), TopicFilter::parse(&b)) else {
                return Ok(());
            };
            if af.matches(&t) && bf.matches(&t) {
                prop_assert!(overlaps(&a, &b), "{a} and {b} both match {t}");
            }
        }
    }
}
