//! Templates for Kafka topic names and record keys: literal text with `${topic}`,
//! `${topic.N}` (the N-th level of the MQTT topic, from 1), `${clientid}` and
//! `${username}` in it. Parsed once when the configuration loads, rendered per message.

use crate::errors::ConfigError;

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// The whole MQTT topic.
    Topic,
    /// One level of the MQTT topic, counted from 1.
    TopicLevel(usize),
    ClientId,
    Username,
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    source: String,
}

/// What a template is rendered from.
#[derive(Debug, Clone, Copy)]
pub struct TemplateInput<'a> {
    pub topic: &'a str,
    pub client_id: &'a str,
    /// Empty when the client gave none.
    pub username: &'a str,
}

impl Template {
    /// Parses `source`; `key` names the configuration key in errors.
    pub fn parse(key: &str, source: &str) -> Result<Template, ConfigError> {
        let parts = scan(
            key,
            source,
            "${topic}, ${topic.N} (N from 1), ${clientid}, ${username}",
            Part::Literal,
            |name| match name {
                "topic" => Some(Part::Topic),
                "clientid" => Some(Part::ClientId),
                "username" => Some(Part::Username),
                _ => match name.strip_prefix("topic.").map(str::parse::<usize>) {
                    Some(Ok(level)) if level >= 1 => Some(Part::TopicLevel(level)),
                    _ => None,
                },
            },
        )?;
        Ok(Template {
            parts,
            source: source.to_string(),
        })
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The rendered text. A topic level the topic does not have renders empty.
    pub fn render(&self, input: TemplateInput<'_>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Topic => out.push_str(input.topic),
                Part::TopicLevel(level) => {
                    if let Some(value) = input.topic.split('/').nth(level - 1) {
                        out.push_str(value);
                    }
                }
                Part::ClientId => out.push_str(input.client_id),
                Part::Username => out.push_str(input.username),
            }
        }
        out
    }
}

/// The MQTT topic of an ingress rule: literal text with `${kafka_topic}`, `${key}` and
/// `${header.NAME}` in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressTemplate {
    parts: Vec<IngressPart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum IngressPart {
    Literal(String),
    KafkaTopic,
    Key,
    Header(String),
}

impl IngressTemplate {
    /// Parses `source`; `key` names the configuration key in errors.
    pub fn parse(key: &str, source: &str) -> Result<IngressTemplate, ConfigError> {
        if source.is_empty() {
            return Err(ConfigError::invalid(key, "must not be empty"));
        }
        let parts = scan(
            key,
            source,
            "${kafka_topic}, ${key}, ${header.NAME}",
            IngressPart::Literal,
            |name| match name {
                "kafka_topic" => Some(IngressPart::KafkaTopic),
                "key" => Some(IngressPart::Key),
                _ => name
                    .strip_prefix("header.")
                    .filter(|header| !header.is_empty())
                    .map(|header| IngressPart::Header(header.to_string())),
            },
        )?;
        Ok(IngressTemplate { parts })
    }

    /// The MQTT topic for a record of `kafka_topic` with `key` and `headers`; an error
    /// names what the record lacks.
    pub fn render(
        &self,
        kafka_topic: &str,
        key: Option<&str>,
        headers: &[(String, String)],
    ) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                IngressPart::Literal(text) => out.push_str(text),
                IngressPart::KafkaTopic => out.push_str(kafka_topic),
                IngressPart::Key => match key {
                    Some(key) if !key.is_empty() => out.push_str(key),
                    _ => return Err("the record has no key".to_string()),
                },
                IngressPart::Header(name) => match headers.iter().find(|(k, _)| k == name) {
                    Some((_, value)) => out.push_str(value),
                    None => return Err(format!("the record has no header {name:?}")),
                },
            }
        }
        Ok(out)
    }
}

/// Splits `source` into literal text and `${name}` placeholders, each resolved by
/// `placeholder`; an unknown name is an error that lists the `known` ones.
fn scan<P>(
    key: &str,
    source: &str,
    known: &str,
    literal: impl Fn(String) -> P,
    placeholder: impl Fn(&str) -> Option<P>,
) -> Result<Vec<P>, ConfigError> {
    let mut parts = Vec::new();
    let mut rest = source;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            parts.push(literal(rest[..start].to_string()));
        }
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(ConfigError::invalid(
                key,
                format!("unclosed `${{` in template {source:?}"),
            ));
        };
        let name = &after[..end];
        let Some(part) = placeholder(name) else {
            return Err(ConfigError::invalid(
                key,
                format!("unknown placeholder `${{{name}}}` in template {source:?}; known: {known}"),
            ));
        };
        parts.push(part);
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        parts.push(literal(rest.to_string()));
    }
    Ok(parts)
}

/// Makes a rendered name a legal Kafka topic name: Kafka allows only ASCII letters,
/// digits, `.`, `_` and `-`, at most 249 of them. Every other character (an MQTT `/`
/// above all) becomes `_`; an empty name stays empty (the bridge counts such a record as failed and drops it).
pub fn kafka_topic_name(rendered: &str) -> String {
    let mut name: String = rendered
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    name.truncate(249);
    if name == "." || name == ".." {
        name = name.replace('.', "_");
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(topic: &'a str) -> TemplateInput<'a> {
        TemplateInput {
            topic,
            client_id: "dev-7",
            username: "alice",
        }
    }

    #[test]
    fn placeholders_render_from_the_message() {
        let t = Template::parse("k", "mqtt.${topic.1}.${topic.3}-${clientid}/${username}").unwrap();
        assert_eq!(t.render(input("site/a/temp")), "mqtt.site.temp-dev-7/alice");
        let whole = Template::parse("k", "${topic}").unwrap();
        assert_eq!(whole.render(input("a/b")), "a/b");
        let literal = Template::parse("k", "telemetry").unwrap();
        assert_eq!(literal.render(input("a/b")), "telemetry");
    }

    #[test]
    fn a_missing_level_renders_empty() {
        let t = Template::parse("k", "x-${topic.4}-y").unwrap();
        assert_eq!(t.render(input("a/b")), "x--y");
    }

    #[test]
    fn bad_templates_name_the_key_and_the_problem() {
        for (source, needle) in [
            ("${topik}", "unknown placeholder `${topik}`"),
            ("${topic.0}", "unknown placeholder `${topic.0}`"),
            ("${topic.x}", "unknown placeholder"),
            ("a-${topic", "unclosed"),
        ] {
            let err = Template::parse("kafka.egress[0].kafka_topic", source)
                .unwrap_err()
                .to_string();
            assert!(err.contains("kafka.egress[0].kafka_topic"), "{err}");
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn ingress_templates_take_the_topic_key_and_headers() {
        let t = IngressTemplate::parse("k", "cmd/${key}/${header.kind}").unwrap();
        let headers = vec![("kind".to_string(), "reboot".to_string())];
        assert_eq!(
            t.render("commands", Some("dev-7"), &headers).unwrap(),
            "cmd/dev-7/reboot"
        );
        assert!(t
            .render("commands", None, &headers)
            .unwrap_err()
            .contains("no key"));
        assert!(t
            .render("commands", Some("d"), &[])
            .unwrap_err()
            .contains("no header \"kind\""));
        let fixed = IngressTemplate::parse("k", "from-kafka/${kafka_topic}").unwrap();
        assert_eq!(
            fixed.render("orders", None, &[]).unwrap(),
            "from-kafka/orders"
        );
        let err = IngressTemplate::parse("kafka.ingress[0].mqtt_topic", "${header.}").unwrap_err();
        assert_eq!(err.key, "kafka.ingress[0].mqtt_topic");
    }

    #[test]
    fn rendered_names_become_legal_kafka_topics() {
        assert_eq!(kafka_topic_name("site/a/temp"), "site_a_temp");
        assert_eq!(kafka_topic_name("ok.name_1-2"), "ok.name_1-2");
        assert_eq!(kafka_topic_name("é+#"), "___");
        assert_eq!(kafka_topic_name(".."), "__");
        assert_eq!(kafka_topic_name(&"x".repeat(300)).len(), 249);
    }
}
