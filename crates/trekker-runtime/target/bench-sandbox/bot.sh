#!/bin/sh
echo '{"event":"connected"}'
exec cat > /dev/null
