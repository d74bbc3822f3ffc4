# Manual pages: batv-relay(8), batv-keys(8), batv-relay.toml(5), written in scdoc next to what they
# document. Built into build/man/ (plain, for `man -l` and the tests) and gzipped (-9n: what Debian
# installs), installed by `cmake --install` and by the package under share/man.
# SOURCE_DATE_EPOCH (when set, e.g. by tools/package) fixes the date scdoc prints.
find_program(BATV_SCDOC scdoc REQUIRED)
find_program(BATV_GZIP gzip REQUIRED)
set(BATV_MAN_DIR ${CMAKE_BINARY_DIR}/man)
set(BATV_MANPAGES relay/batv-relay.8 tools/batv-keys.8 conf/batv-relay.toml.5)
set(batv_man_outputs)
foreach(page ${BATV_MANPAGES})
  get_filename_component(name ${page} NAME)
  string(REGEX REPLACE ".*\\.([0-9])$" "\\1" section ${name})
  set(src ${CMAKE_SOURCE_DIR}/${page}.scd)
  add_custom_command(OUTPUT ${BATV_MAN_DIR}/${name} ${BATV_MAN_DIR}/${name}.gz
    COMMAND ${CMAKE_COMMAND} -E make_directory ${BATV_MAN_DIR}
    COMMAND sh -c "'${BATV_SCDOC}' < '${src}' > '${BATV_MAN_DIR}/${name}.tmp'"
    COMMAND ${CMAKE_COMMAND} -E rename ${BATV_MAN_DIR}/${name}.tmp ${BATV_MAN_DIR}/${name}
    COMMAND sh -c "'${BATV_GZIP}' -9n -c '${BATV_MAN_DIR}/${name}' > '${BATV_MAN_DIR}/${name}.gz'"
    DEPENDS ${src}
    COMMENT "scdoc ${name}"
    VERBATIM)
  list(APPEND batv_man_outputs ${BATV_MAN_DIR}/${name} ${BATV_MAN_DIR}/${name}.gz)
  install(FILES ${BATV_MAN_DIR}/${name}.gz DESTINATION ${CMAKE_INSTALL_MANDIR}/man${section})
endforeach()
add_custom_target(man ALL DEPENDS ${batv_man_outputs})
