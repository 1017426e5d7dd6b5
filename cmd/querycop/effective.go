package main

import (
	"fmt"
	"reflect"
	"strings"
	"time"
)

// effectiveConfig is the configuration in force, by variable name, for the
// admin API: secrets are only said to be set or not.
func effectiveConfig(cfg Config) map[string]string {
	out := map[string]string{}
	v := reflect.ValueOf(cfg)
	for i := range v.NumField() {
		f := v.Type().Field(i)
		prefix := envPrefix + f.Tag.Get("envPrefix")
		if f.Name == "AdminKey" {
			prefix = ""
		}
		collectValues(v.Field(i), prefix, out)
	}
	return out
}

func collectValues(v reflect.Value, prefix string, out map[string]string) {
	for i := range v.NumField() {
		f := v.Type().Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		if name == "" {
			if f.Type.Kind() == reflect.Struct {
				collectValues(v.Field(i), prefix+f.Tag.Get("envPrefix"), out)
			}
			continue
		}
		key := prefix + name
		out[key] = formatValue(v.Field(i))
		if secretVars[key] {
			out[key] = "(unset)"
			if !v.Field(i).IsZero() {
				out[key] = "(set, not shown)"
			}
		}
	}
}

func formatValue(v reflect.Value) string {
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return "(default)"
		}
		v = v.Elem()
	}
	if d, ok := v.Interface().(time.Duration); ok {
		return d.String()
	}
	if l, ok := v.Interface().([]string); ok {
		return strings.Join(l, ",")
	}
	return fmt.Sprint(v.Interface())
}
