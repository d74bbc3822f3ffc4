# cmake --install into a scratch DESTDIR (never the real system), then checks the layout and
# that the systemd unit starts the binary where it was installed.
file(REMOVE_RECURSE "${DEST}")
execute_process(COMMAND ${CMAKE_COMMAND} -E env DESTDIR=${DEST}
                        ${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix /usr/local
                RESULT_VARIABLE rc OUTPUT_QUIET)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cmake --install failed: ${rc}")
endif()
foreach(f usr/local/sbin/batv-relay usr/local/bin/batv-keys
          usr/local/share/doc/batv-relay/batv-relay.example.toml
          usr/local/share/doc/batv-relay/README.md usr/local/lib/systemd/system/batv-relay.service
          usr/local/share/man/man8/batv-relay.8.gz usr/local/share/man/man8/batv-keys.8.gz
          usr/local/share/man/man5/batv-relay.toml.5.gz
          usr/local/share/batv-relay/grafana/batv-relay.json
          usr/local/share/batv-relay/prometheus/batv-relay.rules.yml)
  if(NOT EXISTS "${DEST}/${f}")
    message(FATAL_ERROR "not installed: ${f}")
  endif()
endforeach()
# The package-only files (component "deb": the conffile, sysusers.d, tmpfiles.d, the /lib unit)
# are never written by `cmake --install`: it must not touch /etc or the system's unit directory.
foreach(f etc lib usr/lib usr/local/lib/sysusers.d usr/local/share/doc/batv-relay/copyright)
  if(EXISTS "${DEST}/${f}")
    message(FATAL_ERROR "cmake --install wrote a package-only path: ${f}")
  endif()
endforeach()
file(READ "${DEST}/usr/local/lib/systemd/system/batv-relay.service" unit)
if(NOT unit MATCHES "ExecStart=/usr/local/sbin/batv-relay --config /etc/batv-relay/relay.toml")
  message(FATAL_ERROR "the unit does not start the installed binary:\n${unit}")
endif()
if(NOT unit MATCHES "Type=notify")
  message(FATAL_ERROR "the unit does not use readiness notification")
endif()
execute_process(COMMAND "${DEST}/usr/local/sbin/batv-relay" --version OUTPUT_VARIABLE v RESULT_VARIABLE rc)
if(NOT rc EQUAL 0 OR NOT v MATCHES "^batv-relay [0-9]+\\.[0-9]+\\.[0-9]+")
  message(FATAL_ERROR "installed batv-relay --version: ${rc} ${v}")
endif()
file(REMOVE_RECURSE "${DEST}")
message(STATUS "install layout OK")
