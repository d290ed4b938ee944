-- The live admin console follows every bot change of the fleet (not one
-- server's): its change feed reads these, in change order.
CREATE INDEX bot_instances_fleet_changes ON bot_instances (change_seq);
CREATE INDEX bot_departures_fleet_changes ON bot_departures (change_seq);
