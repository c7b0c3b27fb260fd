//! The node's access rules: `[acl]` from the configuration file, until rules are set at
//! runtime (`PUT /api/v1/acl`, `fleetmq ctl acl set`). Those are a replicated setting
//! (`fleetmq_broker::persist::SETTINGS`, name [`ACL_SETTING`]): every node of the
//! cluster follows them within a round trip of the commit, and a node that starts or
//! restarts reads them from its store. Clearing them returns every node to its file.

use std::sync::Arc;

use fleetmq_auth::{AclConfig, AclRules};
use fleetmq_broker::Settings;
use tokio::sync::watch;
use tracing::{info, warn};

/// The setting that holds runtime rules: an [`AclConfig`] as JSON.
pub const ACL_SETTING: &str = "acl";

/// Where the rules in force come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RulesSource {
    File,
    Cluster,
}

/// The rules in force, as written and as built.
#[derive(Debug, Clone)]
pub struct NodeRules {
    pub source: RulesSource,
    pub config: AclConfig,
    pub rules: Arc<AclRules>,
}

/// The rules a setting's bytes hold, checked as the file's are.
pub fn parse_setting(bytes: &[u8]) -> Result<(AclConfig, AclRules), String> {
    let config: AclConfig = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let rules = config
        .build("acl")
        .map_err(|e| format!("{}: {}", e.key, e.problem))?;
    Ok((config, rules))
}

/// Follows `settings` and keeps the rules in force on the returned channel: the
/// runtime rules when the cluster holds some, else the file's.
pub fn follow(
    file_config: AclConfig,
    file_rules: Arc<AclRules>,
    mut settings: watch::Receiver<Settings>,
) -> watch::Receiver<Arc<NodeRules>> {
    let from_file: Arc<NodeRules> = Arc::new(NodeRules {
        source: RulesSource::File,
        config: file_config,
        rules: file_rules,
    });
    let fallback = from_file.clone();
    let pick = move |settings: &Settings, now: &Arc<NodeRules>| -> Arc<NodeRules> {
        match settings.get(ACL_SETTING) {
            None => from_file.clone(),
            Some(bytes) => match parse_setting(bytes) {
                Ok((config, rules)) => Arc::new(NodeRules {
                    source: RulesSource::Cluster,
                    config,
                    rules: Arc::new(rules),
                }),
                // Checked before it was stored; a newer build reading an older one's
                // rules could still refuse them: keep what is in force.
                Err(error) => {
                    warn!(%error, "the cluster's access rules cannot be read; keeping the rules in force");
                    now.clone()
                }
            },
        }
    };
    let first = pick(&settings.borrow_and_update(), &fallback);
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        while settings.changed().await.is_ok() {
            let next = pick(&settings.borrow_and_update(), &tx.borrow());
            if next.source == RulesSource::Cluster || tx.borrow().source == RulesSource::Cluster {
                info!(
                    source = ?next.source,
                    rules = next.config.rules.len(),
                    "access rules changed"
                );
            }
            if tx.send(next).is_err() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn file() -> (AclConfig, Arc<AclRules>) {
        let config: AclConfig = serde_json::from_str(
            r#"{"no_match": "deny", "rules": [{"permission": "allow", "action": "all", "topic": "file/#"}]}"#,
        )
        .unwrap();
        let rules = Arc::new(config.build("acl").unwrap());
        (config, rules)
    }

    async fn next(rx: &mut watch::Receiver<Arc<NodeRules>>) -> Arc<NodeRules> {
        tokio::time::timeout(Duration::from_secs(1), rx.changed())
            .await
            .expect("a change")
            .expect("open");
        rx.borrow_and_update().clone()
    }

    #[tokio::test]
    async fn the_clusters_rules_replace_the_files_until_cleared() {
        let (config, rules) = file();
        let settings = watch::Sender::new(Settings::default());
        let mut rx = follow(config.clone(), rules, settings.subscribe());
        assert_eq!(rx.borrow_and_update().source, RulesSource::File);
        assert_eq!(rx.borrow().config, config);

        let runtime = br#"{"no_match": "allow", "rules": [{"permission": "deny", "action": "publish", "topic": "x/%c"}]}"#;
        settings.send_replace(Arc::new(BTreeMap::from([(
            ACL_SETTING.to_string(),
            Bytes::from_static(runtime),
        )])));
        let now = next(&mut rx).await;
        assert_eq!(now.source, RulesSource::Cluster);
        assert_eq!(now.config.rules[0].topic, "x/%c");

        // Unreadable rules leave the ones in force.
        settings.send_replace(Arc::new(BTreeMap::from([(
            ACL_SETTING.to_string(),
            Bytes::from_static(b"{not json"),
        )])));
        assert_eq!(next(&mut rx).await.source, RulesSource::Cluster);

        settings.send_replace(Settings::default());
        let now = next(&mut rx).await;
        assert_eq!((now.source, &now.config), (RulesSource::File, &config));
    }

    #[test]
    fn a_setting_is_checked_as_the_file_is() {
        let bad = br#"{"rules": [{"permission": "allow", "action": "all", "topic": "a/#/b"}]}"#;
        let err = parse_setting(bad).unwrap_err();
        assert!(err.contains("acl.rules[0].topic"), "{err}");
        assert!(parse_setting(br#"{"rulez": []}"#).is_err());
    }
}
