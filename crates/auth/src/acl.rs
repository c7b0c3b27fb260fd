//! Access rules: may this client publish to this topic, subscribe to this filter?
//!
//! Rules are checked in order and the first that applies decides; when none applies,
//! `no_match` does. A rule applies when its action matches, its `username` /
//! `client_id` (when set) are the client's, and its topic pattern matches:
//! - PUBLISH: the pattern, as a filter, matches the topic;
//! - SUBSCRIBE to a filter: an allow rule's pattern must cover every topic the filter
//!   can match (`a/#` allows `a/b/+`, `a/+` does not allow `a/#`); a deny rule applies
//!   when the two share any topic (deny `secret/#` refuses `#`).
//!
//! `%u` in a pattern stands for the client's username and `%c` for its client id. A
//! rule naming `%u` does not apply to a client without a username, nor to one whose
//! username or client id holds `+`, `#` or `/` (it would widen the pattern).

use std::borrow::Cow;

use fleetmq_topic::relation::{covers, overlaps};
use fleetmq_topic::TopicFilter;
use serde::{Deserialize, Serialize};

use crate::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    Allow,
    Deny,
}

/// What a client does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish,
    Subscribe,
}

/// What a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Actions {
    Publish,
    Subscribe,
    All,
}

impl Actions {
    fn includes(self, action: Action) -> bool {
        matches!(
            (self, action),
            (Actions::All, _)
                | (Actions::Publish, Action::Publish)
                | (Actions::Subscribe, Action::Subscribe)
        )
    }
}

impl From<Action> for Actions {
    fn from(action: Action) -> Actions {
        match action {
            Action::Publish => Actions::Publish,
            Action::Subscribe => Actions::Subscribe,
        }
    }
}

/// `[acl]`, and the rules set at runtime through the admin API (as JSON).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AclConfig {
    /// What happens when no rule applies.
    #[serde(default = "allow")]
    pub no_match: Permission,
    #[serde(default)]
    pub rules: Vec<AclRuleConfig>,
}

fn allow() -> Permission {
    Permission::Allow
}

impl Default for AclConfig {
    fn default() -> Self {
        AclConfig {
            no_match: Permission::Allow,
            rules: Vec::new(),
        }
    }
}

/// One `[[acl.rules]]` entry.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AclRuleConfig {
    pub permission: Permission,
    pub action: Actions,
    /// A topic filter, with `%u` and `%c` where the username and client id go.
    pub topic: String,
    /// Only for this username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Only for this client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

impl AclConfig {
    /// The rules, checked; errors name `key` and the rule (`acl.rules[2].topic`).
    pub fn build(&self, key: &str) -> Result<AclRules, ConfigError> {
        let rules = self
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                AclRule::new(r.permission, r.action, &r.topic)
                    .map(|rule| rule.only_for(r.username.clone(), r.client_id.clone()))
                    .map_err(|e| ConfigError::invalid(format!("{key}.rules[{i}].topic"), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AclRules::new(rules, self.no_match))
    }
}

/// One rule, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct AclRule {
    permission: Permission,
    actions: Actions,
    pattern: String,
    username: Option<String>,
    client_id: Option<String>,
}

impl AclRule {
    /// A rule for every client; `pattern` must be a valid filter once `%u` and `%c`
    /// are filled in.
    pub fn new(permission: Permission, actions: Actions, pattern: &str) -> Result<AclRule, String> {
        let sample = pattern.replace("%u", "u").replace("%c", "c");
        let filter = TopicFilter::parse(&sample)
            .map_err(|e| format!("{pattern:?} is not a topic filter: {e}"))?;
        if filter.is_shared() {
            return Err(format!(
                "{pattern:?}: write the filter without $share/group/ (rules apply to the filter)"
            ));
        }
        Ok(AclRule {
            permission,
            actions,
            pattern: pattern.to_string(),
            username: None,
            client_id: None,
        })
    }

    /// The same rule, for one username and/or client id only.
    pub fn only_for(mut self, username: Option<String>, client_id: Option<String>) -> AclRule {
        self.username = username;
        self.client_id = client_id;
        self
    }

    /// The pattern with `%u` and `%c` filled in for `who` (borrowed, without a copy,
    /// when it has neither); `None` when it cannot be.
    fn pattern_for(&self, who: Who<'_>) -> Option<Cow<'_, str>> {
        let unsafe_value = |v: &str| v.contains(['+', '#', '/']);
        let mut pattern = Cow::Borrowed(self.pattern.as_str());
        if pattern.contains("%u") {
            let user = who.username.filter(|u| !unsafe_value(u))?;
            pattern = Cow::Owned(pattern.replace("%u", user));
        }
        if pattern.contains("%c") {
            if unsafe_value(who.client_id) {
                return None;
            }
            pattern = Cow::Owned(pattern.replace("%c", who.client_id));
        }
        Some(pattern)
    }

    /// Whether the rule decides for `who` doing `action` on `target` (a topic for
    /// PUBLISH, a filter for SUBSCRIBE).
    fn applies(&self, action: Action, target: &str, who: Who<'_>) -> bool {
        if !self.actions.includes(action)
            || self
                .username
                .as_deref()
                .is_some_and(|u| Some(u) != who.username)
            || self
                .client_id
                .as_deref()
                .is_some_and(|c| c != who.client_id)
        {
            return false;
        }
        let Some(pattern) = self.pattern_for(who) else {
            return false;
        };
        // A topic name is a filter without wildcards: the pattern matches it exactly
        // when it covers it, so PUBLISH needs no parsing per message either.
        match (action, self.permission) {
            (Action::Subscribe, Permission::Deny) => overlaps(&pattern, target),
            _ => covers(&pattern, target),
        }
    }
}

/// Who asks, for `%u` and `%c` and per-user rules.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    pub username: Option<&'a str>,
    pub client_id: &'a str,
}

/// The answer of [`AclRules::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Allowed,
    Denied,
}

impl Access {
    pub fn allowed(self) -> bool {
        self == Access::Allowed
    }
}

/// An ordered rule list and what happens when no rule applies.
#[derive(Debug, Clone, PartialEq)]
pub struct AclRules {
    rules: Vec<AclRule>,
    no_match: Permission,
}

impl Default for AclRules {
    /// No rules, everything allowed.
    fn default() -> Self {
        AclRules::new(Vec::new(), Permission::Allow)
    }
}

impl AclRules {
    pub fn new(rules: Vec<AclRule>, no_match: Permission) -> AclRules {
        AclRules { rules, no_match }
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether everything is allowed without looking (no rules, allow when no match).
    pub fn allows_everything(&self) -> bool {
        self.rules.is_empty() && self.no_match == Permission::Allow
    }

    /// May `who` do `action` on `target`: a topic name for PUBLISH, a filter (without
    /// any `$share/group/` prefix) for SUBSCRIBE.
    pub fn check(&self, action: Action, target: &str, who: Who<'_>) -> Access {
        let permission = self
            .rules
            .iter()
            .find(|rule| rule.applies(action, target, who))
            .map_or(self.no_match, |rule| rule.permission);
        match permission {
            Permission::Allow => Access::Allowed,
            Permission::Deny => Access::Denied,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(toml_text: &str) -> AclRules {
        let config: AclConfig = toml::from_str(toml_text).unwrap();
        config.build("acl").unwrap()
    }

    const ALICE: Who<'static> = Who {
        username: Some("alice"),
        client_id: "sensor-1",
    };

    #[test]
    fn first_matching_rule_decides_and_no_match_the_rest() {
        let acl = rules(
            r##"
no_match = "deny"
[[rules]]
permission = "deny"
action = "all"
topic = "devices/%u/secret"
[[rules]]
permission = "allow"
action = "publish"
topic = "devices/%u/#"
[[rules]]
permission = "allow"
action = "subscribe"
topic = "commands/%c/+"
"##,
        );
        let check = |a, t| acl.check(a, t, ALICE).allowed();
        assert!(check(Action::Publish, "devices/alice/temp"));
        assert!(!check(Action::Publish, "devices/alice/secret"));
        assert!(!check(Action::Publish, "devices/bob/temp"));
        assert!(!check(Action::Subscribe, "devices/alice/temp"));
        assert!(check(Action::Subscribe, "commands/sensor-1/reboot"));
        assert!(check(Action::Subscribe, "commands/sensor-1/+"));
        assert!(!check(Action::Subscribe, "commands/sensor-1/#"));
        assert!(!check(Action::Subscribe, "commands/+/+"));
    }

    #[test]
    fn a_deny_rule_refuses_a_filter_that_reaches_into_its_topics() {
        let acl = rules(
            r##"
[[rules]]
permission = "deny"
action = "subscribe"
topic = "secret/#"
"##,
        );
        assert!(!acl.check(Action::Subscribe, "#", ALICE).allowed());
        assert!(!acl.check(Action::Subscribe, "+/keys", ALICE).allowed());
        assert!(acl.check(Action::Subscribe, "public/#", ALICE).allowed());
    }

    #[test]
    fn placeholders_never_widen_a_pattern() {
        let acl = rules(
            r##"
no_match = "deny"
[[rules]]
permission = "allow"
action = "all"
topic = "users/%u/#"
"##,
        );
        let anonymous = Who {
            username: None,
            client_id: "c",
        };
        assert!(!acl.check(Action::Publish, "users//x", anonymous).allowed());
        let sneaky = Who {
            username: Some("#"),
            client_id: "c",
        };
        assert!(!acl.check(Action::Subscribe, "users/#", sneaky).allowed());
        assert!(acl.check(Action::Publish, "users/alice/x", ALICE).allowed());
    }

    #[test]
    fn per_user_rules_and_errors_that_name_the_rule() {
        let acl = rules(
            r##"
no_match = "deny"
[[rules]]
permission = "allow"
action = "all"
topic = "#"
username = "admin"
"##,
        );
        let admin = Who {
            username: Some("admin"),
            client_id: "x",
        };
        assert!(acl.check(Action::Subscribe, "#", admin).allowed());
        assert!(!acl.check(Action::Subscribe, "#", ALICE).allowed());

        let config: AclConfig = toml::from_str(
            "[[rules]]\npermission = \"allow\"\naction = \"all\"\ntopic = \"a/#/b\"\n",
        )
        .unwrap();
        let err = config.build("acl").unwrap_err().to_string();
        assert!(err.contains("acl.rules[0].topic"), "{err}");
        assert!(toml::from_str::<AclConfig>(
            "[[rules]]\npermission = \"maybe\"\naction = \"all\"\ntopic = \"a\"\n"
        )
        .is_err());
    }
}
