-- The admin's view of the cross-server outbox pages newest first.
CREATE INDEX credential_update_outbox_page ON credential_update_outbox (created_at DESC, id);
