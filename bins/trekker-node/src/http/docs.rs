//! `/api/openapi.json`, generated from the handlers' annotations.

use axum::Json;
use axum::Router;
use axum::routing::get;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{ErrorCode, admin, audit, events, guest, internal, keys, log_stream, logs, messages, ops, pairing};
use crate::AppState;

#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "Trekker", description = "Control plane for hosting WhatsApp bots across many servers."),
    paths(
        guest::validate_credentials, guest::register_bot, guest::credential_update, guest::servers_available,
        internal::receive_credentials, internal::health,
        pairing::request_pairing, pairing::pairing_status,
        admin::list_servers, admin::update_server, admin::list_bots, admin::get_bot, admin::approve_bot,
        admin::reject_bot, admin::move_bot, admin::restart_bot, admin::stop_bot, admin::evacuate_server,
        admin::delete_bot, admin::list_activities, admin::capacity_warnings,
        messages::send_message, messages::message_for_peer,
        admin::inconsistencies, admin::repair, admin::cross_server_stats,
        logs::bot_logs, logs::logs_for_peer, log_stream::bot_log_stream,
        admin::list_reviews, admin::approve_review, admin::reject_review, admin::list_credential_updates,
        keys::create_key, keys::list_keys, keys::revoke_key, keys::whoami, audit::list_audit,
        events::public_events, events::admin_events,
        ops::healthz, ops::readyz, ops::metrics,
    ),
    components(schemas(ErrorCode)),
    modifiers(&AdminAuth),
    tags((name = "guest"), (name = "pairing"), (name = "admin"), (name = "internal"), (name = "operations")),
)]
pub struct ApiDoc;

struct AdminAuth;

impl Modify for AdminAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("ADMIN_TOKEN, or an API key (`trk_...`) of a role that may call the endpoint"))
                    .build(),
            ),
        );
    }
}

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/api/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Every `(method, path)` the routers declare, read from their source
    /// (axum cannot list a router's routes).
    fn routed() -> std::collections::BTreeSet<(String, String)> {
        let sources = [
            include_str!("admin.rs"),
            include_str!("audit.rs"),
            include_str!("dashboard.rs"),
            include_str!("docs.rs"),
            include_str!("events.rs"),
            include_str!("guest.rs"),
            include_str!("internal.rs"),
            include_str!("keys.rs"),
            include_str!("logs.rs"),
            include_str!("log_stream.rs"),
            include_str!("messages.rs"),
            include_str!("ops.rs"),
            include_str!("pairing.rs"),
        ];
        let constants = [
            ("CREDENTIALS_PATH", trekker_tenancy::wire::CREDENTIALS_PATH),
            ("HEALTH_PATH", trekker_tenancy::wire::HEALTH_PATH),
            ("LOGS_PATH", trekker_tenancy::wire::LOGS_PATH),
            ("MESSAGES_PATH", trekker_tenancy::wire::MESSAGES_PATH),
        ];
        let mut routes = std::collections::BTreeSet::new();
        for source in sources {
            // Only code: the test module of this file quotes `.route(` too.
            let code = source.split("#[cfg(test)]").next().unwrap();
            for chunk in code.split(".route(").skip(1) {
                let call = chunk.split(['\n', ';']).next().unwrap();
                let path = match call.strip_prefix('"') {
                    Some(rest) => rest.split('"').next().unwrap().to_owned(),
                    None => {
                        let name = call.split(',').next().unwrap().trim();
                        constants.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("{name}")).1.to_owned()
                    }
                };
                for method in ["get", "post", "patch", "put", "delete"] {
                    if call.contains(&format!(" {method}(")) || call.contains(&format!(".{method}(")) {
                        routes.insert((method.to_owned(), path.clone()));
                    }
                }
            }
        }
        routes
    }

    #[test]
    fn the_document_describes_every_route_of_the_router_and_no_other() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut documented = std::collections::BTreeSet::new();
        for (path, operations) in doc["paths"].as_object().unwrap() {
            for method in operations.as_object().unwrap().keys() {
                documented.insert((method.clone(), path.clone()));
            }
        }
        let mut routed = routed();
        assert!(routed.len() >= 20, "the source scan found only {routed:?}");
        // Not API operations: the human pages and this document itself.
        routed.remove(&("get".to_owned(), "/".to_owned()));
        routed.remove(&("get".to_owned(), "/admin".to_owned()));
        routed.remove(&("get".to_owned(), "/api/openapi.json".to_owned()));
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(undocumented.is_empty() && unrouted.is_empty(), "undocumented {undocumented:?}, unrouted {unrouted:?}");
    }

    #[test]
    fn the_document_lists_every_error_code_as_clients_see_it() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let listed: Vec<&str> = doc["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(listed, codes);
        // The body's `code` is the same enum, serialized the same way.
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
        assert_eq!(
            doc["components"]["schemas"]["ErrorBody"]["properties"]["code"]["$ref"],
            "#/components/schemas/ErrorCode"
        );
    }

    /// `/a/{requestId}/b` and `/a/{request_id}/b` alike: `/a/{}/b`.
    fn unnamed_parameters(path: &str) -> String {
        path.split('/').map(|part| if part.starts_with('{') { "{}" } else { part }).collect::<Vec<_>>().join("/")
    }

    /// docs/api.md, the contract clients are written against, names every
    /// operation a node serves and every error code with its status; what it
    /// names beyond them is marked planned.
    #[test]
    fn docs_api_md_matches_the_document() {
        let contract = include_str!("../../../../docs/api.md");
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut served = std::collections::BTreeSet::new();
        for (path, operations) in doc["paths"].as_object().unwrap() {
            for method in operations.as_object().unwrap().keys() {
                served.insert(format!("{} {}", method.to_uppercase(), unnamed_parameters(path)));
            }
        }
        let mut named = std::collections::BTreeSet::new();
        // A heading marked planned covers its section, a bullet marked so
        // (at its start) covers the bullet's lines.
        let (mut planned_section, mut planned_item) = (false, false);
        for line in contract.lines() {
            if line.starts_with('#') {
                (planned_section, planned_item) = (line.contains("*(planned)*"), false);
            } else if line.starts_with("- ") || line.is_empty() {
                planned_item = line.starts_with("- *(planned)*");
            }
            if planned_section || planned_item {
                continue;
            }
            for piece in line.split('`').skip(1).step_by(2) {
                let mut words = piece.split_whitespace();
                if let (Some(method @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE")), Some(path)) =
                    (words.next(), words.next())
                {
                    named.insert(format!("{method} {}", unnamed_parameters(path.split('?').next().unwrap())));
                }
            }
        }
        let unnamed: Vec<_> = served.difference(&named).collect();
        // The console and the document itself are served, not described.
        let pages = ["GET /admin", "GET /api/openapi.json"];
        let unserved: Vec<_> = named.difference(&served).filter(|op| !pages.contains(&op.as_str())).collect();
        assert!(unnamed.is_empty(), "served but not in docs/api.md: {unnamed:?}");
        assert!(unserved.is_empty(), "in docs/api.md, not served and not marked planned: {unserved:?}");
        for code in ErrorCode::ALL {
            let row = format!("| {} | {} |", code.as_str(), code.status().as_u16());
            assert!(contract.contains(&row), "docs/api.md's error table lacks {row}");
        }
    }
}
