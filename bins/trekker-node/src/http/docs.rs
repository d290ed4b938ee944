//! `/api/openapi.json`, generated from the handlers' annotations.

use axum::Json;
use axum::Router;
use axum::routing::get;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{admin, guest, internal, ops, pairing};
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
