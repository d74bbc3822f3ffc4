# The Debian package: CPack's DEB generator over the normal install, plus the files only the
# package has (component "deb", EXCLUDE_FROM_ALL, so `cmake --install` never writes to /etc):
#   /etc/batv-relay/relay.toml            conffile: the example config with the packaged defaults
#   /lib/systemd/system/batv-relay.service  the unit with /usr paths (Debian 12 keeps units in /lib)
#   /usr/lib/sysusers.d/batv-relay.conf, /usr/lib/tmpfiles.d/batv-relay.conf
#   /usr/share/doc/batv-relay/copyright, changelog.gz; the lintian overrides
# and the maintainer scripts postinst, prerm, postrm (tools/package.d/). Dependencies are computed
# from the binaries (dpkg-shlibdeps). tools/package runs `cpack` in the build tree; the result is
# build/batv-relay_<version>_<arch>.deb.
set(BATV_PKG_SRC ${CMAKE_SOURCE_DIR}/tools/package.d)
set(BATV_PKG_STAGE ${CMAKE_BINARY_DIR}/package)
file(MAKE_DIRECTORY ${BATV_PKG_STAGE})

# --- the packaged config: the example, with safe defaults for a fresh installation ---------------
# Every listener on loopback, the key file at its packaged place, inbound in monitor mode (the
# roll-out advice: bounces of mail sent before signing began carry no tag). Each replacement must
# match the example, so a changed example cannot silently give a different packaged config.
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/conf/batv-relay.example.toml)
file(READ ${CMAKE_SOURCE_DIR}/conf/batv-relay.example.toml batv_conffile)
foreach(pair
    "key_file = \"keys.toml\"|key_file = \"/etc/batv-relay/keys.toml\""
    "listen = \"0.0.0.0:2525\"|listen = \"127.0.0.1:2525\""
    "mode = \"enforce\"|mode = \"monitor\"")
  string(REPLACE "|" ";" pair "${pair}")
  list(GET pair 0 from)
  list(GET pair 1 to)
  string(FIND "${batv_conffile}" "${from}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "tools/package.d/package.cmake: '${from}' is no longer in conf/batv-relay.example.toml")
  endif()
  string(REPLACE "${from}" "${to}" batv_conffile "${batv_conffile}")
endforeach()
# Every active (uncommented) listen address: loopback or a unix socket.
string(REGEX MATCHALL "(^|\n)(listen = \"[^\"]*\")" batv_listens "${batv_conffile}")
foreach(l ${batv_listens})
  if(NOT l MATCHES "listen = \"(127\\.0\\.0\\.1:|\\[::1\\]:|unix:/)")
    string(STRIP "${l}" l)
    message(FATAL_ERROR "tools/package.d/package.cmake: the packaged config would have ${l}, not on loopback")
  endif()
endforeach()
list(LENGTH batv_listens batv_listen_count)
if(batv_listen_count EQUAL 0)
  message(FATAL_ERROR "tools/package.d/package.cmake: no listen address found in the packaged config")
endif()
file(WRITE ${BATV_PKG_STAGE}/relay.toml
  "# batv-relay configuration (Debian package). A conffile: your edits survive upgrades.\n"
  "# Every listener is on loopback and inbound runs in monitor mode until you change them;\n"
  "# see batv-relay.toml(5). Check a change with: batv-relay --check-config /etc/batv-relay/relay.toml\n"
  "# then: systemctl reload batv-relay\n#\n"
  "${batv_conffile}")
install(FILES ${BATV_PKG_STAGE}/relay.toml DESTINATION /etc/batv-relay COMPONENT deb EXCLUDE_FROM_ALL)

# --- the unit, sysusers.d, tmpfiles.d ------------------------------------------------------------
set(BATV_UNIT_SBINDIR /usr/sbin)
configure_file(${CMAKE_SOURCE_DIR}/relay/batv-relay.service.in ${BATV_PKG_STAGE}/batv-relay.service @ONLY)
install(FILES ${BATV_PKG_STAGE}/batv-relay.service DESTINATION /lib/systemd/system COMPONENT deb EXCLUDE_FROM_ALL)
install(FILES ${BATV_PKG_SRC}/batv-relay.sysusers DESTINATION lib/sysusers.d RENAME batv-relay.conf
        COMPONENT deb EXCLUDE_FROM_ALL)
install(FILES ${BATV_PKG_SRC}/batv-relay.tmpfiles DESTINATION lib/tmpfiles.d RENAME batv-relay.conf
        COMPONENT deb EXCLUDE_FROM_ALL)

# --- Debian's documentation files ---------------------------------------------------------------
string(TIMESTAMP batv_date "%a, %d %b %Y %H:%M:%S +0000" UTC)
file(WRITE ${BATV_PKG_STAGE}/changelog
  "batv-relay (${PROJECT_VERSION}) unstable; urgency=medium\n\n"
  "  * Package built with CPack from the batv-relay source tree (see README.md).\n\n"
  " -- batv-relay maintainers <batv-relay@example.org>  ${batv_date}\n")
add_custom_command(OUTPUT ${BATV_PKG_STAGE}/changelog.gz
  COMMAND sh -c "gzip -9n -c '${BATV_PKG_STAGE}/changelog' > '${BATV_PKG_STAGE}/changelog.gz'"
  DEPENDS ${BATV_PKG_STAGE}/changelog VERBATIM)
add_custom_target(package_files ALL DEPENDS ${BATV_PKG_STAGE}/changelog.gz)
install(FILES ${BATV_PKG_SRC}/copyright ${BATV_PKG_STAGE}/changelog.gz DESTINATION ${CMAKE_INSTALL_DOCDIR}
        COMPONENT deb EXCLUDE_FROM_ALL)
install(FILES ${BATV_PKG_SRC}/lintian-overrides DESTINATION share/lintian/overrides RENAME batv-relay
        COMPONENT deb EXCLUDE_FROM_ALL)

# --- CPack ---------------------------------------------------------------------------------------
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME batv-relay)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "batv-relay maintainers <batv-relay@example.org>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "BATV (prvs) signing relay and bounce-verifying gateway")
# The extended description: CPack puts the summary first and indents each line by one space.
set(CPACK_PACKAGE_DESCRIPTION
"batv-relay ends backscatter with BATV (Bounce Address Tag Validation). As an
outbound smarthost it rewrites the envelope sender of your mail with a signed
prvs tag; as an inbound gateway in front of the MX it accepts bounces only for
recipients whose tag verifies. Tags interoperate with Exim's prvs.

It is a transparent SMTP proxy, not a queue: a message is accepted only when
the next hop accepted it. The batv-keys tool creates, rotates and retires the
keys. Includes a hardened systemd unit, Prometheus metrics, a Grafana
dashboard and Prometheus alerting rules.")
set(CPACK_DEBIAN_PACKAGE_SECTION mail)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# useradd in postinst (where systemd-sysusers is missing): passwd is not Essential.
set(CPACK_DEBIAN_PACKAGE_DEPENDS "passwd")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_PACKAGE_DIRECTORY ${CMAKE_BINARY_DIR})
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
  ${BATV_PKG_SRC}/postinst ${BATV_PKG_SRC}/prerm ${BATV_PKG_SRC}/postrm ${BATV_PKG_SRC}/conffiles)
# The default component (binaries, man pages, docs, dashboard, rules) and "deb"; not "local", the
# unit with the `cmake --install` prefix's paths.
set(CPACK_INSTALL_CMAKE_PROJECTS
  "${CMAKE_BINARY_DIR};batv-relay;Unspecified;/" "${CMAKE_BINARY_DIR};batv-relay;deb;/")
include(CPack)
