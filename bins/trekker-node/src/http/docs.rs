//! `/api/openapi.json`, generated from the handlers' annotations.

use axum::Json;
use axum::Router;
use axum::routing::get;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{ErrorCode, admin, guest, internal, ops, pairing};
use crate::AppState;

#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "Trekker", description = "Control plane for hosting WhatsApp bots across many servers."),
    paths(
        guest::validate_credentials, guest::register_bot, guest::credential_update, guest::servers_available,
        internal::receive_credentials, internal::health,
        pairing::request_pairing, pairing::pairing_status,
        admin::list_servers, admin::update_server, admin::list_bots, admin::get_bot, admin::approve_bot,
        admin::reject_bot, admin::delete_bot, admin::inconsistencies, admin::repair,
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
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some("ADMIN_TOKEN")).build(),
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
}
