//! Deployment metrics to a Prometheus Pushgateway, and instant queries against a
//! Prometheus HTTP API (the numbers a canary gate decides on).

use std::time::Duration;

/// One deployment, as metrics.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeployMetrics {
    pub app: String,
    pub environment: String,
    pub release: String,
    pub success: bool,
    pub duration_seconds: f64,
    pub timestamp_seconds: i64,
}

/// Why a push or a query did not give its answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MetricsError {
    /// The HTTP client could not be built (the TLS setup).
    #[error("{0}")]
    Client(reqwest::Error),
    #[error("cannot reach the Pushgateway: {0}")]
    PushgatewayUnreachable(reqwest::Error),
    #[error("the Pushgateway answered {0}")]
    PushRefused(reqwest::StatusCode),
    #[error("cannot reach Prometheus: {0}")]
    PrometheusUnreachable(reqwest::Error),
    #[error("Prometheus answered {status} with no JSON: {source}")]
    NotJson {
        status: reqwest::StatusCode,
        source: reqwest::Error,
    },
    #[error(transparent)]
    Answer(#[from] AnswerError),
}

/// Why a `/api/v1/query` answer is not exactly one number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AnswerError {
    #[error("query `{promql}` failed: {reason}")]
    Failed { promql: String, reason: String },
    #[error("query `{promql}` returned a value that is not a number")]
    NotANumber { promql: String },
    #[error("query `{promql}` returned no series (no traffic yet, or a wrong metric name?)")]
    NoSeries { promql: String },
    #[error("query `{promql}` returned {count} series; aggregate it (e.g. sum(...)) to one number")]
    ManySeries { promql: String, count: usize },
    #[error("query `{promql}` returned a {result_type:?}, expected a scalar or one series")]
    WrongType {
        promql: String,
        /// The answer's `resultType` (`matrix`, `string`), if it has one.
        result_type: Option<String>,
    },
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text exposition format for a deployment.
pub(crate) fn exposition(m: &DeployMetrics) -> String {
    let labels = format!(
        "app=\"{}\",env=\"{}\",release=\"{}\"",
        label(&m.app),
        label(&m.environment),
        label(&m.release)
    );
    format!(
        "# TYPE runbook_deploy_duration_seconds gauge\nrunbook_deploy_duration_seconds{{{labels}}} {}\n# TYPE runbook_deploy_success gauge\nrunbook_deploy_success{{{labels}}} {}\n# TYPE runbook_deploy_timestamp_seconds gauge\nrunbook_deploy_timestamp_seconds{{{labels}}} {}\n",
        m.duration_seconds,
        u8::from(m.success),
        m.timestamp_seconds
    )
}

/// PUTs the metrics to `<gateway>/metrics/job/runbook/env/<env>` (replacing that group).
pub(crate) async fn push(
    gateway: &str,
    m: &DeployMetrics,
    timeout: Duration,
) -> Result<(), MetricsError> {
    crate::tls::init();
    let url = format!(
        "{}/metrics/job/runbook/env/{}",
        gateway.trim_end_matches('/'),
        m.environment
    );
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(MetricsError::Client)?;
    let resp = client
        .put(&url)
        .header("Content-Type", "text/plain; version=0.0.4")
        .body(exposition(m))
        .send()
        .await
        .map_err(MetricsError::PushgatewayUnreachable)?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(MetricsError::PushRefused(resp.status()))
    }
}

/// An instant query; exactly one number, or an error that says why not.
pub(crate) async fn query(
    prometheus: &str,
    promql: &str,
    timeout: Duration,
) -> Result<f64, MetricsError> {
    crate::tls::init();
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(MetricsError::Client)?;
    let url = format!("{}/api/v1/query", prometheus.trim_end_matches('/'));
    let resp = client
        .get(&url)
        .query(&[("query", promql)])
        .send()
        .await
        .map_err(MetricsError::PrometheusUnreachable)?;
    let status = resp.status();
    let doc: serde_json::Value = resp
        .json()
        .await
        .map_err(|source| MetricsError::NotJson { status, source })?;
    Ok(value_of(&doc, promql)?)
}

/// Extracts the single number from a `/api/v1/query` answer.
pub(crate) fn value_of(doc: &serde_json::Value, promql: &str) -> Result<f64, AnswerError> {
    let promql = promql.to_owned();
    if doc["status"] != "success" {
        return Err(AnswerError::Failed {
            promql,
            reason: doc["error"].as_str().unwrap_or("unknown error").to_owned(),
        });
    }
    let data = &doc["data"];
    let number = |v: &serde_json::Value, promql: String| {
        v[1].as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .ok_or(AnswerError::NotANumber { promql })
    };
    match data["resultType"].as_str() {
        Some("scalar") => number(&data["result"], promql),
        Some("vector") => {
            let result = data["result"].as_array().cloned().unwrap_or_default();
            match result.len() {
                0 => Err(AnswerError::NoSeries { promql }),
                1 => number(&result[0]["value"], promql),
                count => Err(AnswerError::ManySeries { promql, count }),
            }
        }
        other => Err(AnswerError::WrongType {
            promql,
            result_type: other.map(str::to_owned),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_answer_must_be_exactly_one_number() {
        let one = serde_json::json!({"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1.0,"99.7"]}]}});
        assert_eq!(value_of(&one, "q"), Ok(99.7));
        let none =
            serde_json::json!({"status":"success","data":{"resultType":"vector","result":[]}});
        assert!(
            value_of(&none, "q")
                .unwrap_err()
                .to_string()
                .contains("no series")
        );
        let two = serde_json::json!({"status":"success","data":{"resultType":"vector","result":[{"value":[1,"1"]},{"value":[1,"2"]}]}});
        assert!(
            value_of(&two, "q")
                .unwrap_err()
                .to_string()
                .contains("2 series")
        );
    }

    #[test]
    fn labels_are_escaped_in_the_exposition() {
        let text = exposition(&DeployMetrics {
            app: "a\"b".into(),
            environment: "prod".into(),
            release: "r1".into(),
            success: true,
            duration_seconds: 1.5,
            timestamp_seconds: 10,
        });
        assert!(
            text.contains("runbook_deploy_success{app=\"a\\\"b\",env=\"prod\",release=\"r1\"} 1\n"),
            "{text}"
        );
    }
}
